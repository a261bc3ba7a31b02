"""Text in a safetensors file: safetensors stores arrays only (no strings, never pickles), so a
note, a list of names or a JSON record travels as its UTF-8 bytes in a ``uint8`` array."""

from __future__ import annotations

import numpy as np


def text_tensor(text: str) -> np.ndarray:
    """UTF-8 ``text`` as a ``uint8`` array (empty text: an empty array)."""
    return np.frombuffer(text.encode(), dtype=np.uint8).copy()


def tensor_text(array: np.ndarray) -> str:
    """The text :func:`text_tensor` stored. Raises ``UnicodeDecodeError`` for other bytes."""
    return bytes(np.asarray(array).astype(np.uint8)).decode()
