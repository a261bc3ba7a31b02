"""Anomaly models, by the name the CLI, configs and bundles use.

The library's own models are listed here; a model living elsewhere (the supervised baseline in
``baselines/``, a user's plug-in) registers through the ``anomaly.models`` entry point group
(``name = "package.module:Class"`` in its ``pyproject.toml``) or by calling
:func:`register_model`. Classes are imported lazily by dotted path, so listing the names costs
no import.
"""

from __future__ import annotations

import importlib
import logging
from importlib.metadata import entry_points

from anomaly.errors import ConfigError
from anomaly.models.base import AnomalyModel, Prediction

logger = logging.getLogger(__name__)

#: Entry point group through which packages outside the library add models.
ENTRY_POINT_GROUP = "anomaly.models"

_BUILTIN: dict[str, str] = {
    "patchcore": "anomaly.models.patchcore:PatchCore",
    "padim": "anomaly.models.padim:PaDiM",
    "hybrid": "anomaly.models.hybrid:Hybrid",
}
_registered: dict[str, str] = {}
_plugins: dict[str, str] | None = None


def register_model(name: str, path: str) -> None:
    """Make the class at ``path`` (``"package.module:Class"``) available as model ``name``."""
    if name in _BUILTIN:
        raise ConfigError(f"model={name!r} is a built-in model and cannot be replaced")
    if ":" not in path:
        raise ConfigError(f"model path {path!r}: expected 'package.module:Class'")
    _registered[name] = path


def model_paths() -> dict[str, str]:
    """Every known model name with its ``module:Class`` path (built-in first)."""
    global _plugins
    if _plugins is None:
        _plugins = {}
        for point in entry_points(group=ENTRY_POINT_GROUP):
            if point.name in _BUILTIN:
                logger.warning("entry point %s ignored: built-in model name", point.name)
                continue
            _plugins[point.name] = point.value
    return {**_BUILTIN, **_plugins, **_registered}


def model_names() -> list[str]:
    return list(model_paths())


def model_class(name: str) -> type[AnomalyModel]:
    """The model class registered as ``name``."""
    paths = model_paths()
    if name not in paths:
        raise ConfigError(f"model={name!r}: choose one of {', '.join(paths)}")
    module_name, _, class_name = paths[name].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ConfigError(f"model={name!r}: {module_name} cannot be imported ({error})") from error
    cls = getattr(module, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, AnomalyModel)):
        raise ConfigError(f"model={name!r}: {paths[name]} is not an AnomalyModel class")
    return cls


def __getattr__(name: str):
    if name == "PatchCore":
        return model_class("patchcore")
    if name == "PaDiM":
        return model_class("padim")
    raise AttributeError(name)


__all__ = [
    "ENTRY_POINT_GROUP",
    "AnomalyModel",
    "PaDiM",
    "PatchCore",
    "Prediction",
    "model_class",
    "model_names",
    "model_paths",
    "register_model",
]
