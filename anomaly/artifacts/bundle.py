"""Model bundles: one directory per fitted model, safe to load, written atomically.

Layout::

    <bundle>/config.yaml          the resolved configuration of the run that made it
    <bundle>/model.safetensors    learned arrays (safetensors: tensors only, no code)
    <bundle>/memory_bank.faiss    model-specific extra files (faiss's own format)
    <bundle>/metadata.json        format, versions, backbone, training summary, calibration,
                                  evaluation, and the SHA-256 of every other file

No file is ever unpickled. Loading refuses a bundle with missing, extra or altered files, a
metadata file whose own checksum does not match (an edited threshold, say), or backbone weights
other than the ones the model was fitted with. The checksums catch corruption and accidental
edits; they are not a signature against a deliberate forger.

Saving writes into a temporary sibling directory and renames it into place, so a crash leaves
the previous bundle (or none), never half of one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from safetensors.numpy import load_file, save_file

from anomaly import __version__
from anomaly.decision.calibration import Calibration
from anomaly.errors import BundleError
from anomaly.models import model_class, model_names
from anomaly.models.base import AnomalyModel

logger = logging.getLogger(__name__)

FORMAT = "anomaly-bundle"
FORMAT_VERSION = 1
METADATA = "metadata.json"
CONFIG = "config.yaml"
TENSORS = "model.safetensors"
_PICKLE_SUFFIXES = (".pkl", ".pickle", ".pt", ".pth", ".ckpt", ".joblib", ".npy", ".npz")


def save_bundle(
    model: AnomalyModel,
    path: str | Path,
    config_yaml: str = "",
    extra_metadata: dict[str, Any] | None = None,
) -> Path:
    """Write ``model`` as a bundle directory at ``path`` (replacing an existing one atomically)."""
    model._check_fitted()
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        (staging / CONFIG).write_text(config_yaml or "# fitted from the Python API\n")
        tensors = {k: np.ascontiguousarray(v) for k, v in model.state_tensors().items()}
        save_file(tensors, str(staging / TENSORS))
        model.write_extra_files(staging)
        files = sorted(p.name for p in staging.iterdir())
        calibration = getattr(model, "calibration_", None)
        metadata: dict[str, Any] = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "model": model.model_name,
            "params": model.get_params(),
            "backbone": {
                "name": model.backbone,
                "weights_source": model.extractor_.weights_source,
                "weights_sha256": model.backbone_sha256_,
            },
            "training": {
                "n_images": model.n_train_images_,
                "fit_seconds": round(model.fit_seconds_, 3),
            },
            "calibration": None if calibration is None else calibration.to_dict(),
            "versions": library_versions(),
            **(extra_metadata or {}),
            "files": {name: file_sha256(staging / name) for name in files},
        }
        metadata["checksum"] = _metadata_checksum(metadata)
        (staging / METADATA).write_text(json.dumps(metadata, indent=2, default=_json_default))
        for file in staging.iterdir():
            _fsync(file)
        replace_directory(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("saved %s bundle to %s", model.model_name, target)
    return target


def read_metadata(path: str | Path) -> dict[str, Any]:
    """Read and verify a bundle's metadata and file checksums; returns the metadata."""
    bundle = Path(path)
    if not bundle.exists():
        raise BundleError(f"{bundle}: no model bundle here (fit one with `anomaly fit`)")
    if not bundle.is_dir():
        raise BundleError(f"{bundle}: a model bundle is a directory, this is a file")
    meta_path = bundle / METADATA
    if not meta_path.is_file():
        raise BundleError(f"{bundle}: not a model bundle ({METADATA} is missing)")
    try:
        metadata = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise BundleError(f"{meta_path}: not valid JSON ({error})") from error
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        raise BundleError(f"{meta_path}: not an {FORMAT} file")
    if metadata.get("format_version") != FORMAT_VERSION:
        raise BundleError(
            f"{meta_path}: bundle format {metadata.get('format_version')} is not supported "
            f"(this version reads {FORMAT_VERSION})"
        )
    if metadata.get("checksum") != _metadata_checksum(metadata):
        raise BundleError(f"{meta_path}: metadata was altered after saving (checksum mismatch)")
    expected = metadata.get("files", {})
    present = {p.name for p in bundle.iterdir()} - {METADATA}
    unexpected = sorted(present - set(expected))
    if unexpected:
        unsafe = [n for n in unexpected if n.endswith(_PICKLE_SUFFIXES)]
        kind = "pickle-style files are never loaded" if unsafe else "unknown files"
        raise BundleError(f"{bundle}: refusing bundle with {kind}: {', '.join(unexpected)}")
    for name, digest in expected.items():
        file = bundle / name
        if not file.is_file():
            raise BundleError(f"{file}: missing from the bundle")
        if file_sha256(file) != digest:
            raise BundleError(f"{file}: contents changed after saving (checksum mismatch)")
        if _looks_pickled(file):
            raise BundleError(f"{file}: holds pickle data, which is never loaded")
    return metadata


def read_config(path: str | Path) -> DictConfig:
    """The resolved configuration a bundle was saved with (its ``config.yaml``).

    Raises :class:`BundleError` naming the file when it is missing or not valid YAML.
    """
    config_path = Path(path) / CONFIG
    if not config_path.is_file():
        raise BundleError(f"{config_path}: missing; {Path(path)} is not a model bundle")
    try:
        config = OmegaConf.load(config_path)
    except (OSError, OmegaConfBaseException, yaml.YAMLError) as error:
        raise BundleError(f"{config_path}: cannot read the bundle's config ({error})") from error
    if not isinstance(config, DictConfig):
        raise BundleError(f"{config_path}: not a mapping of config keys")
    return config


def load_bundle(path: str | Path) -> AnomalyModel:
    """Load a fitted (and usually calibrated) model from a bundle directory."""
    bundle = Path(path)
    metadata = read_metadata(bundle)
    name = metadata.get("model")
    if name not in model_names():
        raise BundleError(f"{bundle}: unknown model {name!r} (known: {', '.join(model_names())})")
    model = model_class(name)(**metadata["params"])
    try:
        tensors = load_file(str(bundle / TENSORS))
    except Exception as error:
        raise BundleError(f"{bundle / TENSORS}: not a readable safetensors file") from error
    model.load_state(tensors, bundle)
    model.extractor_ = model._make_extractor()
    expected_weights = metadata["backbone"]["weights_sha256"]
    if model.extractor_.weights_sha256() != expected_weights:
        raise BundleError(
            f"{bundle}: backbone {model.backbone} weights differ from those the model was fitted "
            "with; scores would not be comparable"
        )
    model.backbone_sha256_ = expected_weights
    model.n_train_images_ = metadata["training"]["n_images"]
    model.fit_seconds_ = metadata["training"]["fit_seconds"]
    calibration = metadata.get("calibration")
    model.calibration_ = None if calibration is None else Calibration.from_dict(calibration)
    model.metadata_ = metadata
    return model


def bundle_size_bytes(path: str | Path) -> int:
    return sum(p.stat().st_size for p in Path(path).iterdir() if p.is_file())


def replace_directory(staging: Path, target: Path) -> None:
    """Move ``staging`` to ``target``; an existing ``target`` is kept until the move succeeds."""
    if not target.exists():
        os.replace(staging, target)
        return
    if not target.is_dir():
        raise BundleError(f"{target}: exists and is not a bundle directory; not overwriting it")
    previous = target.with_name(f".{target.name}.old-{os.getpid()}")
    os.replace(target, previous)
    try:
        os.replace(staging, target)
    except BaseException:
        os.replace(previous, target)
        raise
    shutil.rmtree(previous, ignore_errors=True)


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _metadata_checksum(metadata: dict[str, Any]) -> str:
    content = {k: v for k, v in metadata.items() if k != "checksum"}
    text = json.dumps(content, sort_keys=True, default=_json_default)
    return hashlib.sha256(text.encode()).hexdigest()


def _looks_pickled(path: Path) -> bool:
    # Protocol 2+ pickles start with 0x80 then the protocol number; torch zip checkpoints with PK.
    with path.open("rb") as handle:
        head = handle.read(2)
    return len(head) == 2 and head[0] == 0x80 and head[1] in range(2, 6)


def _fsync(path: Path) -> None:
    with path.open("rb") as handle:
        os.fsync(handle.fileno())


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def library_versions() -> dict[str, str]:
    """Versions of the libraries that decide a model's numbers, recorded with every result.

    OpenCV is here because it renders the built-in sealant images and resizes images and maps.
    """
    import cv2
    import faiss
    import timm
    import torch

    return {
        "anomaly": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "faiss": faiss.__version__,
        "numpy": np.__version__,
        "opencv": cv2.__version__,
    }
