"""Exported feature graphs, run by ONNX Runtime or OpenVINO, without PyTorch.

This module imports neither torch nor timm: it is what a line PC with the ``[edge]`` install
runs. The graph file sits in the bundle (checksummed like every other file) and
``metadata.json`` records, under ``runtime``, the engine, the precision and the files.

Precision is always set explicitly. OpenVINO picks bfloat16 by itself on CPUs that have it
(about 4% off PyTorch's features on EfficientNet-Lite0): a silent change of precision is how
exported models come to score differently, so the bundle says which precision it was checked
at and the engine is told to use exactly that.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from anomaly.components.threads import resolve_threads
from anomaly.errors import BundleError, UnsupportedError
from anomaly.runtime.inputs import probe_channels, resize_batch

logger = logging.getLogger(__name__)

INPUT_NAME = "images"
ONNX_FILE = "features.onnx"
OPENVINO_FILES = ("features.xml", "features.bin")
#: Precisions each engine can be told to use (``anomaly export --precision``).
PRECISIONS = {"onnxruntime": ("fp32", "int8"), "openvino": ("fp32", "bf16", "fp16", "int8")}
#: OpenVINO's names for them (``INFERENCE_PRECISION_HINT``). An int8 graph carries its own
#: quantisation (QDQ nodes); what is not quantised runs at f32.
_OPENVINO_HINT = {"fp32": "f32", "bf16": "bf16", "fp16": "f16", "int8": "f32"}
#: The ``[edge]`` extra brings ONNX Runtime; OpenVINO comes with ``[openvino]``.
_INSTALL = {
    "onnxruntime": "pip install 'anomaly[edge]'",
    "openvino": "pip install 'anomaly[openvino]'",
}


def _import_engine(engine: str) -> Any:
    try:
        return importlib.import_module(engine)  # the engines' names are their modules
    except ImportError as error:
        raise UnsupportedError(
            f"this bundle's feature graph runs on {engine}, which is not installed: "
            f"{_INSTALL[engine]}"
        ) from error


class _Exported:
    """What both engines share: the outputs' channels, probed once."""

    path: Path
    image_size: int
    precision: str
    num_threads: int
    _channels: dict[str, int] | None = None

    def with_threads(self, num_threads: int) -> _Exported:
        """The same graph on ``num_threads`` threads: ONNX Runtime and OpenVINO fix the count
        when the session is made, so another count means loading it again."""
        if num_threads == self.num_threads:
            return self
        return type(self)(self.path, self.image_size, self.precision, num_threads)

    def __call__(self, images: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def channels(self, name: str) -> int:
        if self._channels is None:
            self._channels = probe_channels(self, self.image_size)
        if name not in self._channels:
            raise BundleError(f"{self.path}: the graph has no output {name!r}")
        return self._channels[name]


class OnnxRuntime(_Exported):
    """A feature graph in ONNX Runtime (CPU execution provider): fp32, or int8 when the export
    quantised the graph (the precision lives in the graph file itself)."""

    engine = "onnxruntime"

    def __init__(self, path: Path, image_size: int, precision: str, num_threads: int = 0) -> None:
        ort = _import_engine(self.engine)
        options = ort.SessionOptions()
        options.intra_op_num_threads = resolve_threads(num_threads)
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # warnings about unused initialisers are noise here
        # Idle ORT threads otherwise spin for a while after each run, taking the cores the
        # faiss search that follows needs (measured: search 8 -> 14 ms/image on 2 cores).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(
                str(path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as error:  # ORT raises its own error types for unreadable graphs
            raise BundleError(f"{path}: not a loadable ONNX graph ({error})") from error
        self.path, self.image_size, self.precision = path, image_size, precision
        self.num_threads = num_threads
        self.names = [output.name for output in self.session.get_outputs()]

    def __call__(self, images: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        batch = resize_batch(images, self.image_size)
        outputs = self.session.run(self.names, {INPUT_NAME: batch})
        return dict(zip(self.names, outputs, strict=True))

    def files(self) -> list[Path]:
        return [self.path]

    def describe(self) -> dict[str, Any]:
        return {"engine": self.engine, "precision": self.precision, "files": [ONNX_FILE]}


class OpenVinoRuntime(_Exported):
    """A feature graph in OpenVINO (CPU plugin) at an explicit inference precision."""

    engine = "openvino"

    def __init__(self, path: Path, image_size: int, precision: str, num_threads: int = 0) -> None:
        ov = _import_engine(self.engine)
        core = ov.Core()
        try:
            model = core.read_model(str(path))
            self.compiled = core.compile_model(
                model,
                "CPU",
                {
                    "INFERENCE_PRECISION_HINT": _OPENVINO_HINT[precision],
                    "INFERENCE_NUM_THREADS": resolve_threads(num_threads),
                },
            )
        except Exception as error:  # OpenVINO raises RuntimeError with its own trace
            raise BundleError(f"{path}: not a loadable OpenVINO model ({error})") from error
        # What the CPU plugin actually runs at: a CPU without bfloat16 units runs bf16 as f32.
        used = self.compiled.get_property("INFERENCE_PRECISION_HINT")
        used = used.to_string() if hasattr(used, "to_string") else str(used)
        self.effective_precision = (
            precision
            if used == _OPENVINO_HINT[precision]
            else {"f32": "fp32", "bf16": "bf16", "f16": "fp16"}.get(used, used)
        )
        if self.effective_precision != precision:
            logger.warning(
                "OpenVINO runs this graph at %s on this CPU, not at %s as asked",
                self.effective_precision,
                precision,
            )
        self.request = self.compiled.create_infer_request()
        self.path, self.image_size, self.precision = path, image_size, precision
        self.num_threads = num_threads
        self.names = [output.get_any_name() for output in self.compiled.outputs]

    def __call__(self, images: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        batch = resize_batch(images, self.image_size)
        results = self.request.infer({INPUT_NAME: batch})
        # Copies: the request reuses its output buffers on the next call.
        return {
            name: np.array(results[output], dtype=np.float32)
            for name, output in zip(self.names, self.compiled.outputs, strict=True)
        }

    def files(self) -> list[Path]:
        return [self.path, self.path.with_suffix(".bin")]

    def describe(self) -> dict[str, Any]:
        return {
            "engine": self.engine,
            "precision": self.precision,
            "effective_precision": self.effective_precision,
            "files": list(OPENVINO_FILES),
        }


def check_precision(engine: str, precision: str) -> None:
    """Raise :class:`UnsupportedError` for a precision ``engine`` cannot be told to use."""
    if engine not in PRECISIONS:
        raise UnsupportedError(f"export format {engine!r}: choose onnx (ONNX Runtime) or openvino")
    if precision not in PRECISIONS[engine]:
        raise UnsupportedError(
            f"precision {precision!r} with {engine}: choose {', '.join(PRECISIONS[engine])}"
        )


def load_runtime(
    bundle_dir: Path, description: dict[str, Any], image_size: int, num_threads: int = 0
) -> OnnxRuntime | OpenVinoRuntime:
    """The exported runtime a bundle's ``metadata.json`` describes under ``runtime``."""
    engine, precision = description.get("engine"), description.get("precision", "fp32")
    if engine not in PRECISIONS:
        raise BundleError(f"{bundle_dir}: unknown runtime engine {engine!r}")
    check_precision(engine, precision)
    if engine == "onnxruntime":
        return OnnxRuntime(bundle_dir / ONNX_FILE, image_size, precision, num_threads)
    return OpenVinoRuntime(bundle_dir / OPENVINO_FILES[0], image_size, precision, num_threads)
