"""Anomaly models, by the name the CLI, configs and bundles use.

Classes are imported lazily by dotted path, so a model living outside the library (the
supervised baseline in ``baselines/``) plugs in without the library importing it up front.
"""

from __future__ import annotations

import importlib

from anomaly.errors import ConfigError
from anomaly.models.base import AnomalyModel, Prediction

MODEL_PATHS: dict[str, str] = {
    "patchcore": "anomaly.models.patchcore:PatchCore",
    "padim": "anomaly.models.padim:PaDiM",
    "baseline": "baselines.classifier:SupervisedClassifier",
}


def model_names() -> list[str]:
    return list(MODEL_PATHS)


def model_class(name: str) -> type[AnomalyModel]:
    """The model class registered as ``name``."""
    if name not in MODEL_PATHS:
        raise ConfigError(f"model={name!r}: choose one of {', '.join(MODEL_PATHS)}")
    module_name, _, class_name = MODEL_PATHS[name].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ConfigError(f"model={name!r}: {module_name} cannot be imported ({error})") from error
    return getattr(module, class_name)


def __getattr__(name: str):
    if name == "PatchCore":
        return model_class("patchcore")
    if name == "PaDiM":
        return model_class("padim")
    raise AttributeError(name)


__all__ = [
    "MODEL_PATHS",
    "AnomalyModel",
    "PaDiM",
    "PatchCore",
    "Prediction",
    "model_class",
    "model_names",
]
