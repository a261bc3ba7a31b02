"""Where a scoring run's batches are scored: in this process, or on a Ray cluster.

Both engines run the one per-batch step (:func:`anomaly.engines.scoring.score_images`) and
hand its results back to ``anomaly score``, which records them through one
:class:`~anomaly.artifacts.rundir.RunWriter`: the engine changes where the work runs, never what
the run directory holds. ``ray`` (:mod:`anomaly.engines.ray`) needs the ``[ray]`` extra and is
imported only when asked for.
"""
