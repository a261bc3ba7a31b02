"""A fitted scikit-learn linear classifier as plain arrays, one weight row per class.

scikit-learn keeps a single row for two classes (the log-odds of the second); models here store
one row per class so that scoring is the same ``softmax(x @ coef.T + intercept)`` or ``argmax``
whatever the number of classes, and a bundle holds arrays only.
"""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression


def class_rows(model: LogisticRegression) -> tuple[np.ndarray, np.ndarray]:
    """``(coef (K, F), intercept (K,))`` of a fitted ``model`` with ``K`` classes, float64.

    For two classes the rows are ``[0, z]``: ``softmax([0, z]) = [1 - sigmoid(z), sigmoid(z)]``,
    the probabilities scikit-learn gives.
    """
    coef = np.asarray(model.coef_, dtype=np.float64)
    intercept = np.asarray(model.intercept_, dtype=np.float64)
    if len(model.classes_) == 2:
        coef, intercept = np.vstack([np.zeros_like(coef), coef]), np.r_[0.0, intercept]
    return coef, intercept
