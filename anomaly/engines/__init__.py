"""Where a scoring run's batches are scored (and a fit's features extracted): in this
process, or on a Ray cluster.

Both engines run the one per-batch step (:func:`anomaly.engines.scoring.score_images`) and
hand its results back to ``anomaly score``, which records them through one
:class:`~anomaly.artifacts.rundir.RunWriter`: the engine changes where the work runs, never what
the run directory holds. ``ray`` (:mod:`anomaly.engines.ray`) needs the ``[ray]`` extra and is
imported only when asked for.
"""


def wants_ray(engine_name: str) -> bool:
    """Whether ``engine.name`` asks for Ray (``ray``) rather than this process (``local``)."""
    from anomaly.errors import ConfigError

    if engine_name not in ("local", "ray"):
        raise ConfigError(f"engine.name={engine_name!r}: must be local or ray")
    return engine_name == "ray"
