"""Scoring and fitting on a Ray cluster (``engine.name=ray``; the ``[ray]`` extra).

Fitting (:class:`RayFitEngine`): the good training images in contiguous shards, one Ray task
each, reduced on the workers to the model's shard summary (PaDiM's float64 sums, PatchCore's
streaming coreset) and merged by the driver (``anomaly fit``), which then calibrates and tests.

Scoring (:class:`RayEngine`), a Ray Data pipeline: the driver (``anomaly score``) lists the
files and records every result; Ray only scores:

- the dataset holds ``(input index, path)`` rows, one block per batch of ``batch_size`` rows
  cut from the to-do list exactly as the local engine cuts it, so each actor batch holds the
  same images in the same order as a local batch, and the scores are bit-identical;
- ``map_batches`` runs :class:`BundleScorer` on an actor pool of ``workers`` actors; each loads
  the bundle once, from bytes the driver put in the object store (so no node needs the bundle
  on its disk, and ``load_bundle`` still verifies every checksum), and scores its batches with
  :func:`~anomaly.engines.scoring.score_images`, the step the local engine runs;
- an actor that dies is restarted and its batch retried by Ray (``retries`` times each), so a
  run survives a lost worker with every image scored once.

Image files are read by the actors: their paths must be readable on every node.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import re
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any

import numpy as np

from anomaly.artifacts.bundle import load_bundle
from anomaly.artifacts.rundir import ScoreRow
from anomaly.engines.scoring import ScoredImage, Work, score_images
from anomaly.errors import AnomalyError, ConfigError
from anomaly.models import model_class
from anomaly.models.base import AnomalyModel, ImageInput

logger = logging.getLogger(__name__)

#: What a user without Ray is told to install.
RAY_EXTRA = "pip install 'anomaly[ray]'"
#: Fault injection for the tests: a scoring actor (a fit task) given this variable (a marker
#: file's path) dies in its first batch (at its start) if the marker does not exist yet,
#: creating it first, so one worker dies only once.
DIE_ONCE_ENV = "ANOMALY_RAY_DIE_ONCE"


def import_ray() -> ModuleType:
    """The ``ray`` module with Ray Data, or a one-line error naming the extra to install."""
    try:
        import ray
        import ray.data  # the pipeline needs it, and a bare `pip install ray` lacks it
    except ImportError as error:
        raise ConfigError(
            f"engine.name=ray needs Ray Data, which is not installed: {RAY_EXTRA}"
        ) from error
    return ray


def bundle_files(bundle_dir: str | Path) -> dict[str, bytes]:
    """Every file of a bundle directory, by its path relative to the directory."""
    root = Path(bundle_dir)
    return {
        path.relative_to(root).as_posix(): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


class BundleScorer:
    """One scoring actor: loads the bundle once, then scores the batches Ray Data hands it.

    ``bundle`` is a one-item list holding the object reference of :func:`bundle_files`'s
    mapping (in a list so that Ray passes the reference rather than the bytes it names).
    """

    def __init__(
        self,
        bundle: list[Any],
        name: str,
        batch_size: int,
        num_threads: int,
        heatmaps: bool,
        public_key: bytes | None = None,
    ) -> None:
        import ray

        files: dict[str, bytes] = ray.get(bundle[0])
        # The model holds what it needs in memory once loaded, so the copy lives only as long
        # as the load: nothing is left on the node's disk.
        with tempfile.TemporaryDirectory(prefix="anomaly-bundle-") as folder:
            copy = Path(folder) / name
            for relative, data in files.items():
                (copy / relative).parent.mkdir(parents=True, exist_ok=True)
                (copy / relative).write_bytes(data)
            key = None
            if public_key is not None:
                key = Path(folder) / "signer.pub"
                key.write_bytes(public_key)
            self.model = load_bundle(copy, require_signature=key)
            # Before the copy goes: an exported graph reloads from its file for a new count.
            self.model.set_runtime(batch_size, num_threads, progress=False)
        self.heatmaps = heatmaps

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        _die_once_if_asked()
        work = [(int(i), Path(p)) for i, p in zip(batch["index"], batch["path"], strict=True)]
        results = score_images(self.model, work, self.heatmaps)
        # Rows travel as JSON (a float's repr reads back as the same float), pictures as PNG.
        return {
            "index": np.array([r.index for r in results], dtype=np.int64),
            "row": np.array([json.dumps(asdict(r.row)) for r in results], dtype=object),
            "heatmap_png": np.array([r.heatmap_png or b"" for r in results], dtype=object),
        }


def _die_once_if_asked() -> None:
    marker = os.environ.get(DIE_ONCE_ENV)
    if marker and not Path(marker).exists():
        Path(marker).touch()
        os._exit(1)  # as a killed worker would: no exception, no clean-up


class _RayCluster:
    """What both Ray engines share: the checked settings and the connection.

    Used as a context manager: entering connects to Ray (``address``; None starts a local Ray,
    shut down again on exit, unless a caller such as a test or a notebook had connected).
    """

    def __init__(
        self,
        *,
        address: str | None = None,
        workers: int = 2,
        cpus_per_worker: float = 1.0,
        retries: int = 3,
        num_threads: int = 0,
    ) -> None:
        self._ray = import_ray()
        if workers < 1:
            raise ConfigError(f"engine.workers={workers}: must be at least 1")
        if cpus_per_worker <= 0:
            raise ConfigError(f"engine.cpus_per_worker={cpus_per_worker}: must be above 0")
        if retries < 0:
            raise ConfigError(f"engine.retries={retries}: must be 0 or more")
        self.address = address
        self.workers = workers
        self.cpus_per_worker = cpus_per_worker
        self.retries = retries
        # num_threads=0 means every core of the machine; on a node shared by several workers
        # that oversubscribes it, so a worker takes the CPUs it reserved.
        self.num_threads = num_threads or max(1, int(cpus_per_worker))
        self._started = False

    def _connect(self) -> None:
        ray = self._ray
        if not ray.is_initialized():
            ray.init(address=self.address, include_dashboard=False, logging_level=logging.WARNING)
            self._started = True

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self._release()
        if self._started:
            self._ray.shutdown()
            self._started = False

    def _release(self) -> None:
        """Drop what the engine put in Ray's object store (before Ray may shut down)."""

    def describe(self) -> dict[str, Any]:
        return {
            "name": "ray",
            "address": self.address,
            "workers": self.workers,
            "cpus_per_worker": self.cpus_per_worker,
            "threads_per_worker": self.num_threads,
        }


class RayEngine(_RayCluster):
    """Scores a run's batches on a Ray Data actor pool (see the module docstring).

    Entering connects to Ray (see :class:`_RayCluster`) and puts the bundle in the object store
    once for every actor.
    """

    def __init__(
        self,
        bundle_dir: str | Path,
        *,
        address: str | None = None,
        workers: int = 2,
        cpus_per_worker: float = 1.0,
        retries: int = 3,
        batch_size: int = 8,
        num_threads: int = 0,
        require_signature: str | Path | None = None,
        progress: bool = True,
    ) -> None:
        super().__init__(
            address=address,
            workers=workers,
            cpus_per_worker=cpus_per_worker,
            retries=retries,
            num_threads=num_threads,
        )
        if batch_size < 1:
            raise ConfigError(f"runtime.batch_size={batch_size}: must be at least 1")
        self.bundle_dir = Path(bundle_dir)
        self.batch_size = batch_size
        self.require_signature = require_signature
        self.progress = progress
        self._bundle: Any = None

    def __enter__(self) -> RayEngine:
        self._connect()
        try:
            self._bundle = self._ray.put(bundle_files(self.bundle_dir))
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _release(self) -> None:
        self._bundle = None

    def _restarts(self, ray: ModuleType) -> dict[str, int]:
        """Actor restarts and batch retries, bounded: Ray Data's default restarts an actor
        forever, so a batch that kills its actor every time would never end the run. Ray 2.64
        drops the remote arguments this needs; its default then applies."""
        accepts = inspect.signature(ray.data.Dataset.map_batches).parameters.values()
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepts):
            return {}
        return {"max_restarts": self.retries, "max_task_retries": self.retries}

    def run(self, todo: Sequence[Work], heatmaps: bool) -> Iterator[list[ScoredImage]]:
        if self._bundle is None:
            raise RuntimeError("RayEngine.run outside its `with` block")
        if not todo:
            return
        import pyarrow as pa  # comes with ray[data]

        ray = self._ray
        files = dict(todo)
        # Actors may run in another folder or on another node: they read absolute paths, and
        # the rows get the file as the user gave it back on this side.
        blocks = [
            pa.table(
                {
                    "index": pa.array([i for i, _ in chunk], pa.int64()),
                    "path": pa.array([str(Path(f).absolute()) for _, f in chunk], pa.string()),
                }
            )
            for chunk in (
                todo[start : start + self.batch_size]
                for start in range(0, len(todo), self.batch_size)
            )
        ]
        marker = os.environ.get(DIE_ONCE_ENV)
        public_key = None if not self.require_signature else Path(self.require_signature)
        ray.data.DataContext.get_current().enable_progress_bars = self.progress
        with warnings.catch_warnings():  # Ray's deprecation of the arguments _restarts gives
            warnings.filterwarnings("ignore", message=".*ray_remote_args.*")
            scored = ray.data.from_arrow(blocks).map_batches(
                BundleScorer,
                batch_size=self.batch_size,
                batch_format="numpy",
                compute=ray.data.ActorPoolStrategy(size=self.workers),
                num_cpus=self.cpus_per_worker,
                fn_constructor_kwargs={
                    "bundle": [self._bundle],
                    "name": self.bundle_dir.name,
                    "batch_size": self.batch_size,
                    "num_threads": self.num_threads,
                    "heatmaps": heatmaps,
                    "public_key": None if public_key is None else public_key.read_bytes(),
                },
                runtime_env={"env_vars": {DIE_ONCE_ENV: marker}} if marker else None,
                **self._restarts(ray),
            )
        batches = iter(scored.iter_batches(batch_size=None, batch_format="numpy"))
        while True:
            try:
                batch = next(batches, None)
            except ray.exceptions.RayError as error:  # an actor that cannot start, retries spent
                raise AnomalyError(f"scoring on Ray failed: {ray_error_reason(error)}") from error
            if batch is None:
                return
            results = []
            for index, row, png in zip(
                batch["index"], batch["row"], batch["heatmap_png"], strict=True
            ):
                result = ScoredImage(int(index), ScoreRow(**json.loads(row)), bytes(png) or None)
                result.row.file = str(files[result.index])
                results.append(result)
            yield results


class RayFitEngine(_RayCluster):
    """Reduces the shards of a sharded fit (:meth:`AnomalyModel.fit_sharded`) as Ray tasks.

    Each shard is one task of ``cpus_per_worker`` CPUs, at most ``workers`` at once: it builds
    the model from its parameters (the network and its weights found as they are here), runs
    the shard's images through the feature graph and returns the model's shard summary, which
    the driver merges as it arrives. A task whose worker dies is run again by Ray (``retries``
    times). Image files are read by the tasks: their paths must be readable on every node.
    """

    def __enter__(self) -> RayFitEngine:
        self._connect()
        return self

    def shard_count(self, n_images: int) -> int:
        # One contiguous shard per worker: each builds the network once.
        return self.workers

    def map_shards(
        self, model: AnomalyModel, shards: list[list[ImageInput]], context: dict[str, Any]
    ) -> Iterator[Any]:
        ray = self._ray
        params = {**model.get_params(), "num_threads": self.num_threads, "progress": False}
        marker = os.environ.get(DIE_ONCE_ENV)
        task = ray.remote(fit_shard).options(
            num_cpus=self.cpus_per_worker,
            max_retries=self.retries,
            runtime_env={"env_vars": {DIE_ONCE_ENV: marker}} if marker else None,
        )
        shared = ray.put(context)  # the same for every shard (PaDiM's shift): stored once
        pending = [
            task.remote(model.model_name, params, [_absolute(i) for i in shard], shared)
            for shard in shards
        ]
        while pending:
            try:
                done, pending = ray.wait(pending, num_returns=1)
                summary = ray.get(done[0])
            except ray.exceptions.RayError as error:  # a shard failed, its retries spent
                for ref in pending:
                    ray.cancel(ref)
                raise AnomalyError(f"fitting on Ray failed: {ray_error_reason(error)}") from error
            yield summary


def fit_shard(
    model_name: str, params: dict[str, Any], images: list[ImageInput], context: dict[str, Any]
) -> Any:
    """One shard of a sharded fit, on a Ray worker: the model's summary of ``images``."""
    _die_once_if_asked()
    return model_class(model_name)(**params).fit_shard(images, context)


def _absolute(image: ImageInput) -> ImageInput:
    """A path as any worker's folder reads it; an image array as it is."""
    return str(Path(image).absolute()) if isinstance(image, (str, Path)) else image


def ray_error_reason(error: BaseException) -> str:
    """A Ray error in one line: the remote exception it carries (its last ``...Error: why``
    line), else its first line. Ray's messages hold whole remote tracebacks."""
    lines = [_ANSI.sub("", line).strip() for line in str(error).splitlines()]
    causes = [line for line in lines if _EXCEPTION_LINE.match(line)]
    return causes[-1] if causes else next((line for line in lines if line), type(error).__name__)


_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # Ray colours its log prefixes
_EXCEPTION_LINE = re.compile(r"^[\w.]+(Error|Exception): ")
