"""Scores put on one scale across known groups of parts (``data.group_by``).

A line often inspects a few variants of one part: ELPV's monocrystalline and polycrystalline
cells, a product in two colours. Good parts of one variant can score systematically higher than
those of another (poly cells' crystal grains look "anomalous" next to mono cells' plain
surface), so one threshold rejects many good parts of the busy variant to catch the defects of
the quiet one. :class:`GroupScales` learns, from the train images' group labels, to recognise
each image's group from its pooled backbone features (a logistic regression: the group must be
known at scoring time, where only the image is), and, from the validation good images, each
group's score mean and spread. A score is then standardised within its group and put back on
the scale of all validation good images::

    score' = mean_all + std_all * (score - mean_group) / std_group

an affine map per group, applied to the image score and to its patch scores alike, so maps and
thresholds keep their meaning.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from anomaly.errors import BundleError, DataError
from anomaly.io.tensors import tensor_text, text_tensor

#: Regularisation of the group classifier (standardised features; groups are usually obvious).
GROUP_C = 0.1
#: Fewest good validation images a group needs for its own mean and spread.
MIN_GOOD_PER_GROUP = 5


class GroupScales:
    """Recognise an image's group and standardise its scores within that group.

    ``fit(descriptors, groups)`` learns the group classifier; ``fit_scales(scores, groups)``
    the per-group statistics from good validation images; ``apply(scores, descriptors)`` maps
    scores (any trailing shape per image: image scores or patch grids).
    """

    def fit(self, features: np.ndarray, groups: Sequence[str]) -> GroupScales:
        # Imported here: scoring with fitted scales (a line PC's [edge] install) needs numpy only.
        from sklearn.linear_model import LogisticRegression

        from anomaly.components.linear import class_rows

        names = sorted({str(g) for g in groups})
        if len(names) < 2:
            raise DataError(
                f"data.group_by: the good train images form {len(names)} group(s) "
                f"({', '.join(names) or 'none'}); grouping needs at least 2"
            )
        self.names_ = tuple(names)
        self.mean_ = features.mean(axis=0)
        self.scale_ = features.std(axis=0) + 1e-6
        labels = np.array([names.index(str(g)) for g in groups])
        model = LogisticRegression(C=GROUP_C, max_iter=5000).fit(
            self._standardise(features), labels
        )
        self.coef_, self.intercept_ = class_rows(model)
        self.train_accuracy_ = float((self.predict_index(features) == labels).mean())
        self.validation_accuracy_ = float("nan")  # set by fit_scales when true groups are known
        return self

    def predict_index(self, features: np.ndarray) -> np.ndarray:
        """The index (into ``names_``) of each image's most likely group."""
        logits = self._standardise(features) @ self.coef_.T + self.intercept_
        return logits.argmax(axis=1)

    def predict(self, features: np.ndarray) -> list[str]:
        return [self.names_[i] for i in self.predict_index(features)]

    def fit_scales(
        self,
        scores: np.ndarray,
        features: np.ndarray,
        true_groups: Sequence[str | None] | None = None,
    ) -> list[str]:
        """Per-group mean and spread of the good images' ``scores`` (grouped as predicted, the
        way scoring will group them); returns a note per group that kept the overall scale.

        ``true_groups``, when every image has one, measures how well groups are recognised
        (``validation_accuracy_``); they do not change the scales."""
        scores = np.asarray(scores, dtype=np.float64)
        if scores.size < 2:
            raise DataError("data.group_by: needs at least 2 good validation images")
        index = self.predict_index(features)
        if true_groups is not None and len(true_groups) and all(true_groups):
            predicted = [self.names_[i] for i in index]
            right = [p == str(t) for p, t in zip(predicted, true_groups, strict=True)]
            self.validation_accuracy_ = float(np.mean(right))
        self.overall_ = np.array([scores.mean(), scores.std() + 1e-12])
        self.scales_ = np.tile(self.overall_, (len(self.names_), 1))
        notes = []
        for i, name in enumerate(self.names_):
            members = scores[index == i]
            if members.size < MIN_GOOD_PER_GROUP:
                notes.append(
                    f"group {name!r}: {members.size} good validation image(s), fewer than "
                    f"{MIN_GOOD_PER_GROUP}: keeps the overall scale"
                )
                continue
            self.scales_[i] = (members.mean(), members.std() + 1e-12)
        return notes

    def apply(self, scores: np.ndarray, features: np.ndarray) -> np.ndarray:
        """``scores`` ``(B, ...)`` standardised within each image's predicted group."""
        index = self.predict_index(features)
        mean, spread = self.scales_[index, 0], self.scales_[index, 1]
        shape = (-1,) + (1,) * (np.ndim(scores) - 1)
        z = (scores - mean.reshape(shape)) / spread.reshape(shape)
        return (self.overall_[0] + self.overall_[1] * z).astype(np.asarray(scores).dtype)

    def describe(self) -> dict[str, Any]:
        return {
            "groups": list(self.names_),
            "group_accuracy": {
                "train": self.train_accuracy_,
                "validation": self.validation_accuracy_,
            },
            "group_means": [float(v) for v in self.scales_[:, 0]],
            "group_stds": [float(v) for v in self.scales_[:, 1]],
        }

    # ------------------------------------------------------------------ persistence
    def to_tensors(self) -> dict[str, np.ndarray]:
        return {
            "group_names": text_tensor("\n".join(self.names_)),
            "group_feature_mean": self.mean_,
            "group_feature_scale": self.scale_,
            "group_coef": self.coef_,
            "group_intercept": self.intercept_,
            "group_scales": self.scales_,
            "group_overall": self.overall_,
            "group_accuracy": np.array([self.train_accuracy_, self.validation_accuracy_]),
        }

    @classmethod
    def from_tensors(cls, tensors: dict[str, np.ndarray], source: Any) -> GroupScales | None:
        """The fitted scales a bundle holds, or None when it was fitted without groups."""
        if "group_names" not in tensors:
            return None
        scales = cls()
        try:
            scales.names_ = tuple(tensor_text(tensors["group_names"]).split("\n"))
            scales.mean_ = tensors["group_feature_mean"]
            scales.scale_ = tensors["group_feature_scale"]
            scales.coef_ = tensors["group_coef"]
            scales.intercept_ = tensors["group_intercept"]
            scales.scales_ = tensors["group_scales"]
            scales.overall_ = tensors["group_overall"]
            scales.train_accuracy_, scales.validation_accuracy_ = (
                float(v) for v in tensors["group_accuracy"]
            )
        except (KeyError, UnicodeDecodeError) as error:
            raise BundleError(f"{source}: incomplete group scales ({error})") from error
        n = len(scales.names_)
        if scales.coef_.shape != (n, scales.mean_.shape[0]) or scales.scales_.shape != (n, 2):
            raise BundleError(f"{source}: group scales do not match their {n} groups")
        return scales

    def _standardise(self, features: np.ndarray) -> np.ndarray:
        return (features - self.mean_) / self.scale_
