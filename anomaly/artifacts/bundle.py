"""Model bundles: one directory per fitted model, safe to load, written atomically.

Layout::

    <bundle>/config.yaml          the resolved configuration of the run that made it
    <bundle>/model.safetensors    learned arrays (safetensors: tensors only, no code)
    <bundle>/memory_bank.faiss    model-specific extra files (faiss's own format)
    <bundle>/metadata.json        format, versions, backbone, training summary, calibration,
                                  evaluation, and the SHA-256 of every other file
    <bundle>/signature.json       optional: an Ed25519 signature of metadata.json
                                  (:mod:`anomaly.artifacts.signing`)

No file is ever unpickled. Loading refuses a bundle with missing, extra or altered files, a
file that starts like a pickle or a zip archive (the container of torch checkpoints), a
metadata file whose own checksum does not match (an edited threshold, say), or backbone weights
other than the ones the model was fitted with. The checksums catch corruption and accidental
edits, not a deliberate forger who recomputes them: that is what a signature is for.

This module verifies and moves files; what goes into them and how a model is rebuilt from them
is the model's own business (:meth:`~anomaly.models.base.AnomalyModel.bundle_metadata`,
:meth:`~anomaly.models.base.AnomalyModel.from_bundle`).

Saving writes into a staging sibling directory (:func:`anomaly.io.files.make_staging_dir`: the
usual directory mode, umask honoured) and swaps it into place, so a crash leaves the previous
bundle (or none), never half of one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from safetensors.numpy import load_file, save_file

from anomaly import __version__
from anomaly.artifacts.signing import SIGNATURE, verify_bundle, write_signature
from anomaly.errors import BundleError
from anomaly.io.files import (
    file_mode,
    file_sha256,
    fsync_file,
    make_staging_dir,
    previous_versions,
    replace_directory,
)
from anomaly.io.jsonio import json_default
from anomaly.models import model_class, model_names
from anomaly.models.base import AnomalyModel

logger = logging.getLogger(__name__)

FORMAT = "anomaly-bundle"
FORMAT_VERSION = 1
METADATA = "metadata.json"
CONFIG = "config.yaml"
TENSORS = "model.safetensors"
_PICKLE_SUFFIXES = (".pkl", ".pickle", ".pt", ".pth", ".ckpt", ".joblib", ".npy", ".npz")
#: Local file header of a zip archive; ``torch.save`` writes its checkpoints as zip archives.
_ZIP_MAGIC = b"PK\x03\x04"


def save_bundle(
    model: AnomalyModel,
    path: str | Path,
    config_yaml: str = "",
    extra_metadata: dict[str, Any] | None = None,
) -> Path:
    """Write ``model`` as a bundle directory at ``path`` (replacing an existing one atomically).

    The directory and its files get the usual modes (``0777``/``0666`` less the umask).
    """
    model.check_is_fitted()
    target = Path(path)
    if target.exists() and not target.is_dir():
        raise BundleError(f"{target}: exists and is not a bundle directory; not overwriting it")
    staging = make_staging_dir(target)
    try:
        (staging / CONFIG).write_text(config_yaml or "# fitted from the Python API\n")
        tensors = {k: np.ascontiguousarray(v) for k, v in model.bundle_tensors().items()}
        save_file(tensors, str(staging / TENSORS))
        model.write_extra_files(staging)
        files = sorted(p.name for p in staging.iterdir())
        metadata: dict[str, Any] = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            **model.bundle_metadata(),
            "versions": library_versions(),
            **(extra_metadata or {}),
            "files": {name: file_sha256(staging / name) for name in files},
        }
        metadata["checksum"] = _metadata_checksum(metadata)
        (staging / METADATA).write_text(json.dumps(metadata, indent=2, default=json_default))
        mode = file_mode()
        for file in staging.iterdir():
            # safetensors creates its file 0600 (like mkstemp); every file gets the usual mode.
            os.chmod(file, mode)
            fsync_file(file)
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
        left = previous_versions(bundle)
        if left:  # a save interrupted where directories cannot be swapped in one step
            raise BundleError(
                f"{bundle}: no model bundle here, but an interrupted save left the previous one "
                f"at {left[-1]}: rename it to {bundle.name} to use it"
            )
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
    present = {p.name for p in bundle.iterdir()} - {METADATA, SIGNATURE}
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
        unsafe = _unsafe_format(file)
        if unsafe is not None:
            raise BundleError(f"{file}: holds {unsafe}, which is never loaded")
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


def load_bundle(path: str | Path, require_signature: str | Path | None = None) -> AnomalyModel:
    """Load a fitted (and usually calibrated) model from a bundle directory.

    Every file is verified first (:func:`read_metadata`) and, with ``require_signature`` (a
    public key file), the bundle's signature (:func:`~anomaly.artifacts.signing.verify_bundle`);
    the model class registered under the bundle's model name then rebuilds itself
    (:meth:`AnomalyModel.from_bundle`).
    """
    bundle = Path(path)
    metadata = read_metadata(bundle)
    if require_signature:
        verify_bundle(bundle, require_signature)
    name = metadata.get("model")
    if name not in model_names():
        raise BundleError(f"{bundle}: unknown model {name!r} (known: {', '.join(model_names())})")
    try:
        tensors = load_file(str(bundle / TENSORS))
    except Exception as error:
        raise BundleError(f"{bundle / TENSORS}: not a readable safetensors file") from error
    return model_class(name).from_bundle(bundle, metadata, tensors)


def sign_bundle(path: str | Path, private_key: str | Path) -> Path:
    """Verify the bundle at ``path`` and sign it with ``private_key`` (``anomaly sign``);
    returns the signature file. Only a bundle whose files are intact is signed."""
    read_metadata(path)
    return write_signature(path, private_key)


def bundle_size_bytes(path: str | Path) -> int:
    return sum(p.stat().st_size for p in Path(path).iterdir() if p.is_file())


def _metadata_checksum(metadata: dict[str, Any]) -> str:
    content = {k: v for k, v in metadata.items() if k != "checksum"}
    text = json.dumps(content, sort_keys=True, default=json_default)
    return hashlib.sha256(text.encode()).hexdigest()


def _unsafe_format(path: Path) -> str | None:
    """What ``path`` holds when its first bytes are those of a format that can run code.

    Checked: a pickle of protocol 2 to 5 (byte ``0x80`` then the protocol number; protocols 0
    and 1 have no signature to check) and a zip archive (``PK\\x03\\x04``, the container
    ``torch.save`` writes its checkpoints in). ``None`` for anything else, and for a
    well-formed safetensors file whatever its first bytes: they are the little-endian length of
    its JSON header, which can happen to read as a pickle's (a 640-byte header starts ``0x80
    0x02``).
    """
    if path.suffix == ".safetensors" and _is_safetensors(path):
        return None
    with path.open("rb") as handle:
        head = handle.read(len(_ZIP_MAGIC))
    if len(head) >= 2 and head[0] == 0x80 and head[1] in range(2, 6):
        return "pickle data"
    if head == _ZIP_MAGIC:
        return "a zip archive (the format of torch checkpoints)"
    return None


def _is_safetensors(path: Path) -> bool:
    """Whether ``path`` has safetensors' structure: a u64 header length, then a JSON object."""
    size = path.stat().st_size
    with path.open("rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            return False
        header_length = int.from_bytes(prefix, "little")
        if header_length < 2 or 8 + header_length > size:
            return False
        header = handle.read(header_length)
    try:
        return isinstance(json.loads(header), dict)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return False


def library_versions() -> dict[str, str]:
    """Versions of the libraries that decide a model's numbers, recorded with every result.

    Read from the installed distributions, without importing them: an exported bundle is
    saved by a process that may never import torch. OpenCV is here because it renders the
    built-in sealant images and resizes images and maps. A library that is not installed is
    left out.
    """
    from importlib.metadata import PackageNotFoundError, version

    versions = {"anomaly": __version__, "python": platform.python_version()}
    for name, distribution in (
        ("torch", "torch"),
        ("timm", "timm"),
        ("faiss", "faiss-cpu"),
        ("numpy", "numpy"),
        ("opencv", "opencv-python-headless"),
        ("onnxruntime", "onnxruntime"),
        ("openvino", "openvino"),
    ):
        try:
            versions[name] = version(distribution)
        except PackageNotFoundError:
            continue
    return versions
