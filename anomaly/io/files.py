"""The one atomic writer: text, bytes, CSV and PNG files, and whole directories.

A file is written to a hidden temporary sibling, flushed to disk and renamed over its target,
so a reader (a report, a QA tool, the next run) sees the previous file or the finished one,
never half of one. ``tempfile`` creates files 0600 and directories 0700; every file and folder
written here is given the mode any other file of the user gets (``0666``/``0777`` less the
umask), so on a shared line PC the QA team can open what the scorer wrote.

Many small files that are published together (a report's thumbnails) are written with
:func:`write_bytes` into a directory from :func:`make_staging_dir` and published whole by
:func:`replace_directory`: the directory swap is the atomic step, so each file needs neither a
temporary name nor its own fsync, and gets the same mode policy.
"""

from __future__ import annotations

import csv
import ctypes
import errno
import hashlib
import io
import os
import shutil
import tempfile
import threading
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

_umask_lock = threading.Lock()


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux ``/proc``)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    with _umask_lock:  # elsewhere the only way to read it is to set it and put it back
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def file_mode() -> int:
    """Mode of a newly written file: what ``open(path, "w")`` would give."""
    return 0o666 & ~current_umask()


def directory_mode() -> int:
    """Mode of a newly made directory: what ``mkdir`` would give."""
    return 0o777 & ~current_umask()


def write_bytes_atomic(path: str | Path, data: bytes, mode: int | None = None) -> Path:
    """Write ``data`` to ``path`` through a temporary sibling, fsync and a rename.

    ``mode`` overrides the usual file mode (a private key: ``0o600``); the file never has a
    wider mode than the final one at any instant (``mkstemp`` creates it ``0600``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp, file_mode() if mode is None else mode)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8, newlines as given) to ``path`` atomically."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def csv_text(
    columns: Sequence[str],
    rows: Iterable[Mapping[str, Any]],
    lineterminator: str = "\r\n",
    header: bool = True,
) -> str:
    """CSV text of ``rows`` under a header of ``columns`` (lines end ``\\r\\n`` as the ``csv``
    module's default, or ``lineterminator``); ``header=False`` for lines appended to a file
    that has its header already."""
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator=lineterminator)
    if header:
        writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def write_csv_atomic(
    path: str | Path, columns: Sequence[str], rows: Iterable[Mapping[str, Any]]
) -> Path:
    """Write ``rows`` as CSV with the header ``columns`` to ``path`` atomically.

    The text is built in memory first, so a row that fails to format leaves no file at all.
    """
    return write_text_atomic(path, csv_text(columns, rows))


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to a new file inside a staging directory (see the module docstring).

    Not atomic by itself: use it only under :func:`make_staging_dir`, whose directory is
    published whole. The file gets the usual mode, as every file written here does.
    """
    path, mode = Path(path), file_mode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(path, mode)  # O_CREAT leaves an existing file's mode as it was
    return path


def _encode(rgb: np.ndarray, suffix: str, params: Sequence[int] = ()) -> bytes:
    array = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR) if rgb.ndim == 3 else rgb
    ok, encoded = cv2.imencode(suffix, array, list(params))
    if not ok:
        raise OSError(f"{suffix[1:].upper()} encoding failed for an image of shape {rgb.shape}")
    return encoded.tobytes()


def encode_png(rgb: np.ndarray) -> bytes:
    """PNG bytes of an RGB (or grayscale) ``uint8`` image; 16-bit grayscale is kept."""
    return _encode(rgb, ".png")


def encode_jpeg(rgb: np.ndarray, quality: int) -> bytes:
    """JPEG bytes (``quality`` 0..100) of an RGB (or grayscale) ``uint8`` image."""
    return _encode(rgb, ".jpg", (cv2.IMWRITE_JPEG_QUALITY, int(quality)))


def write_png_atomic(path: str | Path, rgb: np.ndarray) -> Path:
    """Write an RGB (or grayscale) image as PNG atomically."""
    return write_bytes_atomic(path, encode_png(rgb))


def make_staging_dir(target: str | Path) -> Path:
    """An empty hidden directory beside ``target`` to build its replacement in.

    It gets the usual directory mode (not ``mkdtemp``'s 0700), so the directory that
    :func:`replace_directory` moves into place is readable like any other.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    os.chmod(staging, directory_mode())
    return staging


def replace_directory(staging: Path, target: Path) -> None:
    """Move ``staging`` to ``target`` so that ``target`` is never missing.

    Where the kernel can swap two paths in one step (Linux ``renameat2`` with
    ``RENAME_EXCHANGE``), ``target`` goes from the old directory to the new one with no instant
    in between, and the old one is then removed. Elsewhere the old directory is renamed to
    :func:`previous_path` first, the new one renamed in, and the old one removed: a crash in
    between leaves the old one there, which :func:`previous_versions` finds.
    """
    if not target.exists():
        os.replace(staging, target)
        return
    if not target.is_dir():
        raise NotADirectoryError(f"{target}: exists and is not a directory; not overwriting it")
    if _exchange(staging, target):
        shutil.rmtree(staging, ignore_errors=True)  # now holds the old directory
        return
    previous = previous_path(target)
    os.replace(target, previous)
    try:
        os.replace(staging, target)
    except BaseException:
        os.replace(previous, target)
        raise
    shutil.rmtree(previous, ignore_errors=True)


def previous_path(target: Path) -> Path:
    """Where :func:`replace_directory` parks ``target``'s old version without an atomic swap."""
    return target.with_name(f".{target.name}.old-{os.getpid()}")


def previous_versions(target: Path) -> list[Path]:
    """Old versions of ``target`` an interrupted :func:`replace_directory` left behind."""
    return sorted(target.parent.glob(f".{target.name}.old-*"))


_AT_FDCWD, _RENAME_EXCHANGE = -100, 2


def _exchange(first: Path, second: Path) -> bool:
    """Swap two existing paths in one step; False where the system cannot (then nothing moved).

    Raises:
        OSError: the system can swap but refused (permissions, another file system).
    """
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # not glibc >= 2.28 / not Linux
        return False
    renameat2.argtypes = [
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_uint,
    ]
    result = renameat2(
        _AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE
    )
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):  # file system without the flag
        return False
    raise OSError(code, os.strerror(code), str(second))


def fsync_file(path: Path) -> None:
    """Flush ``path``'s data to disk (before a rename that must not expose an empty file)."""
    with path.open("rb") as handle:
        os.fsync(handle.fileno())


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
