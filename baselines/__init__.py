"""Baselines the unsupervised models are measured against.

- :class:`baselines.classifier.SupervisedClassifier`: a pretrained classifier fine-tuned on
  good/defect labels (registered as model ``"baseline"``);
- :mod:`baselines.compare`: ``anomaly compare``, every model on the same split, one table.

Imports are lazy so that ``import baselines`` stays cheap.
"""

from __future__ import annotations

from typing import Any

__all__ = ["SupervisedClassifier", "compare_category"]


def __getattr__(name: str) -> Any:
    if name == "SupervisedClassifier":
        from baselines.classifier import SupervisedClassifier

        return SupervisedClassifier
    if name == "compare_category":
        from baselines.compare import compare_category

        return compare_category
    raise AttributeError(name)
