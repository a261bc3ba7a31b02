"""JSON that understands numpy scalars and arrays, paths and tuples."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np


def json_default(value: Any) -> Any:
    """``default=`` hook for :func:`json.dumps`: numpy values, arrays, tuples and paths."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (np.ndarray, tuple)):
        return np.asarray(value).tolist() if isinstance(value, np.ndarray) else list(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def dumps(value: Any, **kwargs: Any) -> str:
    """:func:`json.dumps` with :func:`json_default` (``indent=2`` unless given)."""
    kwargs.setdefault("indent", 2)
    return json.dumps(value, default=json_default, **kwargs)
