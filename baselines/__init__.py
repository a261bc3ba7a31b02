"""Baselines the unsupervised models are measured against.

- :class:`baselines.classifier.SupervisedClassifier`: a pretrained classifier fine-tuned on
  good/defect labels. It registers itself as model ``"baseline"`` through the
  ``anomaly.models`` entry point (``pyproject.toml``), so the library never names it.

Imports are lazy so that ``import baselines`` stays cheap.
"""

from __future__ import annotations

from typing import Any

__all__ = ["SupervisedClassifier"]


def __getattr__(name: str) -> Any:
    if name == "SupervisedClassifier":
        from baselines.classifier import SupervisedClassifier

        return SupervisedClassifier
    raise AttributeError(name)
