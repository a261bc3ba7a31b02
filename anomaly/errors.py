"""Exceptions raised by ``anomaly``.

Every error names the file or value at fault and what is wrong with it, in one line, so that
the CLI can print it as is and a batch job can record it next to the file it concerns.
"""

from __future__ import annotations

from pathlib import Path


class AnomalyError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigError(AnomalyError, ValueError):
    """A configuration key or value is invalid."""


class DataError(AnomalyError, ValueError):
    """A dataset, category or folder cannot be used as asked."""


class ImageReadError(AnomalyError, ValueError):
    """An image file cannot be read or decoded."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class NoImagesError(DataError):
    """A path given to score or fit holds no image file."""


class BackboneError(AnomalyError, ValueError):
    """A backbone is unknown or its weights cannot be had."""


class BundleError(AnomalyError, ValueError):
    """A model bundle is missing, incomplete, tampered with or of an unsafe format."""


class NotFittedError(AnomalyError, RuntimeError):
    """A method needs a fitted (or calibrated) model."""


class UnsupportedError(AnomalyError, NotImplementedError):
    """The model cannot do what was asked (e.g. add images to a PaDiM model without refitting)."""


class RunDirBusyError(DataError):
    """Another run is writing into the same run folder."""
