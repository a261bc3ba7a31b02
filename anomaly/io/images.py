"""Load any common image file into one array format, and find image files under paths.

Every image leaves this module as ``(H, W, 3)`` ``uint8`` RGB whatever it was on disk (8- or
16-bit, float TIFF, grayscale, RGB, RGBA, palette; PNG, JPEG, BMP, TIFF), so the rest of the
package deals with a single format. Anything that cannot be read raises
:class:`~anomaly.errors.ImageReadError` naming the file and a short reason, which a batch job can
record next to the file instead of stopping.

EXIF orientation is ignored: inspection cameras are mounted in a fixed pose, and rotating some
frames but not others according to a tag would misalign them with their masks.
"""

from __future__ import annotations

import io
import logging
import os
import warnings
from collections.abc import Iterable
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from anomaly.errors import DataError, ImageReadError, NoImagesError

logger = logging.getLogger(__name__)

#: File extensions treated as images when walking folders (compared in lower case).
IMAGE_EXTENSIONS: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})

# Magic numbers, to tell "a damaged PNG" from "not an image at all" in error messages.
_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)


def is_image_file(path: str | Path) -> bool:
    """Whether ``path`` has one of :data:`IMAGE_EXTENSIONS` (case-insensitive); no disk access."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def _sniff_format(data: bytes) -> str | None:
    for magic, name in _SIGNATURES:
        if data.startswith(magic):
            return name
    return None


def _looks_truncated(data: bytes, fmt: str | None) -> bool:
    """Cheap structural check, used only once decoding failed, to word the error precisely."""
    if fmt == "PNG":
        # A complete PNG ends with the IEND chunk (type + 4-byte CRC).
        return b"IEND" not in data[-64:]
    if fmt == "JPEG":
        # A complete JPEG ends with the EOI marker, possibly followed by a little padding.
        return b"\xff\xd9" not in data[-1024:]
    return False


def _read_bytes(path: Path) -> bytes:
    if not path.exists():
        raise ImageReadError(path, "file not found")
    if path.is_dir():
        raise ImageReadError(path, "is a folder, not an image file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ImageReadError(path, f"cannot read file ({exc.strerror or exc})") from exc
    if not data:
        raise ImageReadError(path, "empty file (0 bytes)")
    return data


def _decode_cv2(data: bytes) -> np.ndarray | None:
    """Decode with OpenCV; channels come back in RGB(A) order, or ``None`` if it cannot."""
    try:
        array = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error:
        return None
    if array is None:
        return None
    if array.ndim == 3 and array.shape[2] in (3, 4):
        # OpenCV hands out BGR(A); flip the colour channels, leave alpha where it is.
        array = np.concatenate([array[:, :, 2::-1], array[:, :, 3:]], axis=2)
    return array


def _decode_pil(path: Path, data: bytes, fmt: str | None) -> np.ndarray:
    """Decode with Pillow (formats or variants OpenCV lacks); channels in RGB(A) order."""
    try:
        with warnings.catch_warnings():
            # Pillow warns (rather than raises) about damaged metadata; the pixels decide.
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as image:
                image.load()
                return _pil_to_array(image)
    except UnidentifiedImageError as exc:
        detail = f" (corrupt {fmt} data)" if fmt else ""
        raise ImageReadError(path, f"not a decodable image{detail}") from exc
    except Image.DecompressionBombError as exc:
        raise ImageReadError(path, f"image too large to decode safely ({exc})") from exc
    except (OSError, SyntaxError, ValueError, IndexError, EOFError) as exc:
        # Pillow's own truncation message, or a missing end marker OpenCV choked on.
        if "truncated" in str(exc) or _looks_truncated(data, fmt):
            raise ImageReadError(path, "truncated image (file ends before the pixel data)") from exc
        message = " ".join(str(exc).split())  # one line, for CSV error columns
        detail = f"corrupt {fmt} data: {message}" if fmt else message
        raise ImageReadError(path, f"not a decodable image ({detail})") from exc


def _pil_to_array(image: Image.Image) -> np.ndarray:
    mode = image.mode
    if mode.startswith("I;16"):
        # Byte order varies with the sub-mode; normalise to native uint16.
        return np.asarray(image).astype(np.uint16)
    if mode == "I":
        # Pillow's 32-bit integer mode is how it hands out most 16-bit files; keep 16-bit scaling.
        return np.clip(np.asarray(image), 0, 65535).astype(np.uint16)
    if mode in ("L", "RGB", "RGBA", "F"):
        return np.asarray(image)
    if mode == "LA":
        return np.asarray(image)[:, :, 0]
    if mode == "1":
        return np.asarray(image.convert("L"))
    # Palette, CMYK, YCbCr, LAB, HSV, ...: let Pillow do the colour conversion.
    return np.asarray(image.convert("RGB"))


# Reduced-decoding flags by factor, largest first: the largest reduction that still leaves the
# requested size is used.
_REDUCED: tuple[tuple[int, int], ...] = (
    (8, cv2.IMREAD_REDUCED_COLOR_8),
    (4, cv2.IMREAD_REDUCED_COLOR_4),
    (2, cv2.IMREAD_REDUCED_COLOR_2),
)


def _reduction_flag(data: bytes, fmt: str | None, max_side: int) -> int | None:
    """OpenCV flag decoding ``data`` at 1/2, 1/4 or 1/8 size, still >= ``max_side``; or None.

    Only for 8-bit JPEG (Pillow modes ``L`` and ``RGB``): there OpenCV's reduced modes are
    libjpeg's DCT scaling, which decodes less and filters properly, and the samples come out as
    the same 8-bit RGB a full decode gives, so :func:`load_image`'s conversion is unchanged.
    Other formats are decoded in full and then subsampled by OpenCV, which is no faster and
    aliases, and 16-bit or float samples would be converted to 8 bits OpenCV's way instead of
    :func:`_to_uint8`'s: those take the full decode and area averaging instead.
    """
    if fmt != "JPEG":
        return None
    try:
        with Image.open(io.BytesIO(data)) as probe:  # lazy: reads the header only
            mode, longest = probe.mode, max(probe.size)
    except Exception:  # a header Pillow cannot parse: the full decoder will say what is wrong
        return None
    if mode not in ("L", "RGB"):
        return None
    for factor, flag in _REDUCED:
        if longest // factor >= max_side:
            return flag
    return None


def _decode_reduced(data: bytes, fmt: str | None, max_side: int) -> np.ndarray | None:
    """RGB ``uint8`` decoded at reduced size (see :func:`_reduction_flag`), or None."""
    flag = _reduction_flag(data, fmt, max_side)
    if flag is None:
        return None
    # IGNORE_ORIENTATION: the full decode (IMREAD_UNCHANGED) ignores EXIF orientation too.
    bgr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flag | cv2.IMREAD_IGNORE_ORIENTATION)
    return None if bgr is None else cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _decode(path: str | Path, max_side: int | None = None) -> np.ndarray:
    """Decode ``path`` as stored: ``(H, W)`` or ``(H, W, C)`` in RGB(A) order, any dtype.

    With ``max_side`` an 8-bit JPEG may come back at a reduced size (never below ``max_side``).
    """
    path = Path(path)
    # Reading the bytes ourselves (instead of cv2.imread) copes with non-ASCII paths on Windows
    # and lets us tell "missing" from "empty" from "corrupt".
    data = _read_bytes(path)
    fmt = _sniff_format(data)
    if fmt == "TIFF":
        _refuse_multipage(path, data)
    array = None if max_side is None else _decode_reduced(data, fmt, max_side)
    if array is None:
        array = _decode_cv2(data)
    if array is None:
        array = _decode_pil(path, data, fmt)
    if array.ndim not in (2, 3) or array.shape[0] == 0 or array.shape[1] == 0:
        raise ImageReadError(path, f"image has a zero or missing dimension (shape {array.shape})")
    return array


def _refuse_multipage(path: Path, data: bytes) -> None:
    """A TIFF with several pages: decoders return the first one alone, which would score one
    page and drop the rest without a word, so the file is refused with the page count."""
    try:
        with warnings.catch_warnings():  # damaged tags: the decoders below judge the pixels
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as image:
                pages = int(getattr(image, "n_frames", 1))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError):
        return  # the decoders below say what is wrong with it
    if pages > 1:
        raise ImageReadError(
            path,
            f"multi-page TIFF ({pages} pages): only single images are scored, and scoring its "
            "first page alone would drop the others; save each page as its own file",
        )


def _to_uint8(array: np.ndarray) -> np.ndarray:
    """Map samples of any depth onto 0..255 ``uint8`` (see :func:`load_image` for the rules)."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.uint16:
        # round(x * 255 / 65535) == round(x / 257); 257 is odd so no exact halves occur.
        return ((array.astype(np.uint32) + 128) // 257).astype(np.uint8)
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if np.issubdtype(array.dtype, np.floating):
        values = np.nan_to_num(array.astype(np.float64), nan=0.0)
        if values.size and values.max() <= 1.0:
            return np.rint(np.clip(values, 0.0, 1.0) * 255.0).astype(np.uint8)
        return np.rint(np.clip(values, 0.0, 255.0)).astype(np.uint8)
    if np.issubdtype(array.dtype, np.integer):
        top = float(np.iinfo(array.dtype).max)
        values = np.clip(array.astype(np.float64), 0.0, top)
        return np.rint(values * (255.0 / top)).astype(np.uint8)
    raise TypeError(f"unsupported sample type {array.dtype}")


def load_image(path: str | Path, max_side: int | None = None) -> np.ndarray:
    """Load an image file as ``(H, W, 3)`` ``uint8`` RGB.

    Conversions, so that every file ends up in the same format:

    - grayscale ``(H, W)`` is replicated to three channels; alpha (RGBA, gray + alpha) is
      dropped, not composited; palette images are expanded to their colours;
    - 16-bit samples are scaled linearly by 255/65535 and rounded; other integer types are
      clipped at 0 and scaled by ``255 / max`` of their type (Pillow's 32-bit ``"I"`` mode
      counts as 16-bit, which is what it stands for in practice);
    - float samples (TIFF): NaN becomes 0; if the image's maximum is <= 1 the range is taken to
      be 0..1 (clipped, scaled by 255), otherwise 0..255 (clipped); both rounded.

    OpenCV decodes first; Pillow is the fallback for what OpenCV cannot decode.

    ``max_side`` is for pictures of what was scored (the QA report): the result is shrunk with
    :func:`shrink_to_fit` so that its longest side is at most ``max_side``, after the same
    conversion, so a thumbnail shows the picture the model saw. An 8-bit JPEG is decoded at
    1/2, 1/4 or 1/8 scale by libjpeg when that still leaves ``max_side`` pixels: the same
    conversion on less data, which is most of a report's time for camera-sized images.

    Args:
        path: image file (PNG, JPEG, BMP, TIFF, or anything Pillow reads).
        max_side: longest side of the result in pixels (never enlarged); None: full size.

    Returns:
        ``(H, W, 3)`` ``uint8`` array, RGB order, C-contiguous.

    Raises:
        ImageReadError: the file is missing, a folder, empty, truncated, not an image, has a
            zero width or height, or has an unsupported channel count or sample type.
        ValueError: ``max_side`` is below 1.
    """
    if max_side is not None and max_side < 1:
        raise ValueError(f"max_side={max_side}: must be at least 1")
    array = _decode(path, max_side)
    if array.ndim == 3:
        channels = array.shape[2]
        if channels in (1, 2):  # gray, or gray + alpha
            array = array[:, :, 0]
        elif channels in (3, 4):  # RGB, or RGBA
            array = array[:, :, :3]
        else:
            raise ImageReadError(path, f"unsupported number of channels ({channels})")
    try:
        array = _to_uint8(array)
    except TypeError as exc:
        raise ImageReadError(path, str(exc)) from exc
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if max_side is not None:
        array = shrink_to_fit(array, max_side)
    return np.ascontiguousarray(array)


def shrink_to_fit(image: np.ndarray, max_side: int) -> np.ndarray:
    """Shrink ``image`` so its longest side is at most ``max_side``; never enlarges.

    Area averaging (``INTER_AREA``), because point sampling makes thin scratches vanish from
    thumbnails.
    """
    height, width = image.shape[:2]
    scale = max_side / max(height, width)
    if scale >= 1.0:
        return image
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def image_shape(path: str | Path) -> tuple[int, int]:
    """``(H, W)`` of an image file from its header, without decoding the pixels.

    Raises:
        ImageReadError: the file cannot be read or is not an image Pillow knows.
    """
    try:
        with Image.open(path) as image:  # lazy: reads the header only
            width, height = image.size
    except (OSError, UnidentifiedImageError, ValueError) as error:
        raise ImageReadError(f"{path}: cannot read the image size ({error})") from error
    return int(height), int(width)


def load_mask(path: str | Path, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """Load a defect mask as ``(H, W)`` ``bool``: any nonzero colour sample marks a defect.

    The raw samples are tested (before any depth scaling), so a 16-bit mask holding 1 for
    defect pixels still counts; an alpha channel is ignored.

    Args:
        path: mask image file.
        shape: size of the image the mask belongs to, ``(H, W)`` or ``(H, W, C)``; when given
            the mask must have the same height and width.

    Returns:
        ``(H, W)`` ``bool`` array.

    Raises:
        ImageReadError: the file cannot be read as an image.
        DataError: ``shape`` is given and the mask's size differs.
    """
    array = _decode(path)
    if array.ndim == 3:
        # Colour channels only: an opaque alpha channel would otherwise mark every pixel.
        colour = array[:, :, :3] if array.shape[2] >= 3 else array[:, :, :1]
        mask = np.any(colour != 0, axis=2)
    else:
        mask = array != 0
    if shape is not None and tuple(shape[:2]) != mask.shape:
        expected = "x".join(str(int(s)) for s in shape[:2])
        actual = "x".join(str(s) for s in mask.shape)
        raise DataError(f"{Path(path)}: mask is {actual} (HxW) but its image is {expected}")
    return mask


def list_images(
    folder: str | Path, recursive: bool = True, problems: list[tuple[Path, str]] | None = None
) -> list[Path]:
    """Image files under one folder, sorted; hidden files and folders are skipped.

    Symbolic links to folders are followed, each real folder walked once (a link back up the
    tree is not a loop forever). A folder that cannot be listed, and a link that leads back
    into the tree, is appended to ``problems`` as ``(path, reason)`` (and logged), so that a
    caller can report it instead of skipping it silently.

    Unlike :func:`find_images` this returns an empty list for a folder without images, for
    callers (dataset loaders) that decide themselves whether that is an error.

    Args:
        folder: folder to walk; it must exist.
        recursive: walk sub-folders too.
        problems: where to record what could not be walked (None: logged only).

    Returns:
        Paths (``folder`` joined with the relative names), sorted by their path components.
    """
    folder = Path(folder)
    found: list[Path] = []
    seen: set[tuple[int, int]] = set()

    def problem(path: str | Path, reason: str) -> None:
        logger.warning("%s: %s", path, reason)
        if problems is not None:
            problems.append((Path(path), reason))

    def unreadable(error: OSError) -> None:
        problem(error.filename, f"folder cannot be read ({error.strerror or error}); skipped")

    for current, dirs, files in os.walk(folder, onerror=unreadable, followlinks=True):
        try:
            info = os.stat(current)
        except OSError as error:
            unreadable(error)
            dirs[:] = []
            continue
        if (info.st_dev, info.st_ino) in seen:  # reached again through a link: a loop
            problem(current, "a link back to a folder already walked; not walked twice")
            dirs[:] = []
            continue
        seen.add((info.st_dev, info.st_ino))
        # Pruning in place is how os.walk is told not to descend; sorting makes order stable.
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")) if recursive else []
        base = Path(current)
        found.extend(
            base / name for name in files if not name.startswith(".") and is_image_file(name)
        )
    # Sort on path components so that "a/b.png" and "a-b.png" order the same on every OS.
    return sorted(found, key=lambda p: p.parts)


def find_images(
    paths: Iterable[str | Path] | str | Path,
    recursive: bool = True,
    problems: list[tuple[Path, str]] | None = None,
) -> list[Path]:
    """Expand files and folders into the list of image files to process.

    A file given directly is kept as is, whatever its extension, so that a scorer records a
    read error for it instead of silently skipping it. A folder is walked (sorted, hidden
    entries skipped) for files with an image extension. Inputs keep their order; a file reached
    twice is listed once.

    Args:
        paths: files and/or folders (a single path is accepted too).
        recursive: walk sub-folders of the folders given.
        problems: receives ``(folder, reason)`` for what could not be walked
            (:func:`list_images`).

    Returns:
        Image paths, deduplicated, in input order, each folder's files sorted.

    Raises:
        DataError: a path does not exist.
        NoImagesError: a folder holds no image file.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    result: list[Path] = []
    seen: set[Path] = set()
    for entry in paths:
        path = Path(entry)
        if path.is_dir():
            found = list_images(path, recursive=recursive, problems=problems)
            if not found:
                where = "in it or its sub-folders" if recursive else "in it"
                extensions = ", ".join(sorted(IMAGE_EXTENSIONS))
                raise NoImagesError(f"{path}: no image files ({extensions}) {where}")
        elif path.exists():
            found = [path]
        else:
            raise DataError(f"{path}: no such file or folder")
        for item in found:
            if item not in seen:
                seen.add(item)
                result.append(item)
    logger.debug("found %d image file(s)", len(result))
    return result
