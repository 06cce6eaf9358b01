"""Reading image files of any mode into the 1- or 3-channel images a model expects."""

from __future__ import annotations

import contextlib
import errno
import io
import logging
import os
import stat
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

# File name endings of the images vitkit reads from folders (torchvision's list, plus GIF).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")

# Modes whose pixels carry no colour. "LA"/"La" are grey plus alpha; "I;16*", "I" and "F" are high-bit-depth grey.
GRAYSCALE_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_HIGH_DEPTH_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
_EXPECTED = "expected a readable image file (PNG, JPEG, BMP, GIF, TIFF, WebP, ...)"


class ImageLoadError(ValueError):
    """A file could not be decoded as an image; the message names the file (also in ``path``) and the ``reason``."""

    path: Path | str | None = None
    reason: str | None = None


class ImageTooLargeError(ImageLoadError):
    """An image declares more pixels than the caller (or PIL.Image.MAX_IMAGE_PIXELS) allows."""


class ImageFile:
    """An image file of a folder data set, not yet decoded: the transform that receives it decodes it, fully
    (:class:`vitkit.data.transforms.ConvertChannels`) or at the scale its crop needs (:mod:`vitkit.data.decode`)."""

    __slots__ = ("path",)

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = str(path)

    def __repr__(self) -> str:
        return f"ImageFile({self.path!r})"

    def load(self, channels: int) -> Image.Image:
        """The whole image, decoded by :func:`load_image`."""
        return load_image(self.path, channels)


def _check_channels(channels: int) -> None:
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels!r}")


def _high_depth_to_l(image: Image.Image) -> Image.Image:
    """Scale 16/32-bit integer and float grey images to 8 bits (PIL's own convert clips at 255 instead)."""
    pixels = np.asarray(image)
    if image.mode == "F":
        # Float images are taken to be in [0, 1] when they fit, else in [0, 255].
        scale = 255.0 if float(pixels.max(initial=0.0)) <= 1.0 else 1.0
        pixels = pixels.astype(np.float64) * scale
    elif image.mode.startswith("I;16") or int(pixels.max(initial=0)) > 255:
        pixels = pixels.astype(np.float64) / 257.0  # 65535 -> 255
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))


def convert_image(image: Image.Image, channels: int) -> Image.Image:
    """Convert a decoded PIL image of any mode to "L" (channels=1) or "RGB" (channels=3).

    Transparent pixels are composited on white (how a viewer shows them), 16-bit and float grey images are scaled to
    8 bits rather than clipped, and palette/CMYK/YCbCr images go through RGB.
    """
    _check_channels(channels)
    target = "L" if channels == 1 else "RGB"
    if image.mode == target:
        return image
    if image.mode in _HIGH_DEPTH_MODES:
        image = _high_depth_to_l(image)
    elif image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in _ALPHA_MODES:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode not in ("L", "RGB"):
        image = image.convert("RGB")
    return image.convert(target)


def file_problem(path: Path) -> str | None:
    """Why ``path`` cannot be an image file, from the file system alone; None for a non-empty regular file.

    Checked before Pillow opens anything: opening a FIFO would block forever, and a symlink loop or a dangling link
    gives a confusing error deep inside Pillow.
    """
    try:
        info = path.stat()
    except FileNotFoundError:
        if path.is_symlink():
            return f"broken symbolic link: its target {os.readlink(path)} does not exist"
        return "no such file"
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "symbolic link loop: the link leads back to itself"
        return f"cannot be read ({exc.strerror or exc})"
    if stat.S_ISDIR(info.st_mode):
        return "a folder, not a file"
    if not stat.S_ISREG(info.st_mode):
        kind = "a FIFO (named pipe)" if stat.S_ISFIFO(info.st_mode) else "a socket or device"
        return f"not a regular file but {kind}; reading it could block forever"
    if info.st_size == 0:
        return "empty file (0 bytes)"
    if not os.access(path, os.R_OK):
        return "permission denied: the file is not readable by this user"
    return None


def _reason(exc: Exception) -> str:
    """A short, human reason for a Pillow failure."""
    if isinstance(exc, Image.DecompressionBombError):
        return f"decompression bomb: {exc} (PIL.Image.MAX_IMAGE_PIXELS; raise it only for files you trust)"
    if isinstance(exc, UnidentifiedImageError):
        return "not an image in any format Pillow reads (wrong extension, or not an image at all)"
    if "truncated" in str(exc).lower():
        return f"truncated image data ({exc})"
    return f"damaged image data ({type(exc).__name__}: {exc})"


def load_error(path: Path | str, reason: str, kind: type[ImageLoadError] = ImageLoadError) -> ImageLoadError:
    """The ImageLoadError for ``path``: its message names the file, the reason and what was expected."""
    error = kind(f"cannot read {path} as an image: {reason}; {_EXPECTED}")
    error.path, error.reason = path, reason
    return error


@contextlib.contextmanager
def open_image(source: Path | BinaryIO, name: Path | str, max_pixels: int | None = None) -> Iterator[Image.Image]:
    """Image.open with every way a file can be bad turned into an ImageLoadError naming it and the reason.

    ``source`` is a file path or bytes in memory, ``name`` what error messages call it. Pillow refuses images over
    twice its pixel limit and only warns between one and two times it; vitkit refuses everything over the limit (or
    over ``max_pixels``, if lower) with an ImageTooLargeError, so a decompression bomb fails the same clear way
    whatever its size, before any pixel is decoded.
    """
    problem = file_problem(source) if isinstance(source, Path) else None
    if problem is not None:
        raise load_error(name, problem)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter(
                "ignore", Image.DecompressionBombWarning
            )  # refused just below, with a clearer message
            image = Image.open(source)
    except Image.DecompressionBombError as exc:
        raise load_error(name, _reason(exc), ImageTooLargeError) from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise load_error(name, _reason(exc)) from exc
    with image:
        width, height = image.size
        if max_pixels is not None and width * height > max_pixels:
            reason = f"{width}x{height} = {width * height:,} pixels is more than the limit of {max_pixels:,}"
            raise load_error(name, reason, ImageTooLargeError)
        limit = Image.MAX_IMAGE_PIXELS
        if limit is not None and width * height > limit:
            raise load_error(
                name,
                f"decompression bomb: {width}x{height} = {width * height:,} pixels is more than the limit of "
                f"{limit:,} (PIL.Image.MAX_IMAGE_PIXELS; raise it only for files you trust)",
                ImageTooLargeError,
            )
        try:
            yield image
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise load_error(name, _reason(exc)) from exc


def load_image(path: str | os.PathLike, channels: int) -> Image.Image:
    """Decode an image file fully and return it in mode "L" (channels=1) or "RGB" (channels=3).

    The whole file is decoded here (not lazily) so that a corrupt or truncated file fails with an
    :class:`ImageLoadError` naming it and the reason, instead of a PIL error deep inside a data loader. EXIF
    orientation is applied so photos come out upright; an animated image gives its first frame.
    """
    _check_channels(channels)
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        raise FileNotFoundError(f"image file {path} does not exist")
    return _decoded(open_image(path, path), channels)


def decode_image(data: bytes, channels: int, name: str = "image", max_pixels: int | None = None) -> Image.Image:
    """:func:`load_image` for bytes already in memory (an upload); ``name`` only labels error messages.

    With ``max_pixels``, an image whose header declares more pixels raises :class:`ImageTooLargeError` before any
    pixel is decoded, so a small file cannot make the caller allocate a huge image.
    """
    _check_channels(channels)
    return _decoded(open_image(io.BytesIO(data), name, max_pixels), channels)


def _decoded(opened: contextlib.AbstractContextManager[Image.Image], channels: int) -> Image.Image:
    with opened as image:
        image.load()
        ImageOps.exif_transpose(image, in_place=True)
    return convert_image(image, channels)


def _channels_of(mode: str) -> int:
    return 1 if mode in GRAYSCALE_MODES else 3


def image_header(path: str | os.PathLike) -> tuple[int, tuple[int, int]]:
    """(channels, (height, width)) read from the file's header alone (PIL opens lazily), so scanning is cheap.

    channels is 1 when the mode is one of GRAYSCALE_MODES (grey, grey+alpha, 1-bit, 16-bit, float) and 3 otherwise;
    palette images count as colour even when their palette happens to be grey.
    """
    with open_image(Path(path), Path(path)) as image:
        return _channels_of(image.mode), (image.height, image.width)


def check_image(path: str | os.PathLike) -> tuple[int, tuple[int, int]]:
    """Like :func:`image_header`, but every byte of pixel data is decoded, so a truncated file fails here.

    JPEGs are decoded at 1/8 scale (still every block), which makes the check cheap even for large photos.
    """
    with open_image(Path(path), Path(path)) as image:
        header = _channels_of(image.mode), (image.height, image.width)
        image.draft(None, (1, 1))
        image.load()
    return header


# How each format's data ends: a file cut short (an interrupted copy or download) lacks it.
JPEG_HEADER_BYTES = 1 << 16  # a JPEG's frame header follows its EXIF and other segments of up to 64 KiB
_FRAME_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # SOF0..SOF15 (C4, C8, CC are other segments)


def jpeg_frame(stream: BinaryIO) -> tuple[int, int, int] | None:
    """(width, height, components) from the frame header of the JPEG ``stream`` starts with, hopping from segment
    to segment (EXIF thumbnails are skipped, not read: a check reads a few KiB of a file); None when the bytes are
    no JPEG or its frame header is not within their first JPEG_HEADER_BYTES."""
    if stream.read(2) != b"\xff\xd8":
        return None
    start = stream.tell() - 2
    while stream.tell() - start < JPEG_HEADER_BYTES:
        marker = stream.read(2)
        if len(marker) < 2 or marker[0] != 0xFF:
            return None
        if marker[1] == 0xFF:  # a fill byte: the marker is the next byte
            stream.seek(-1, os.SEEK_CUR)
        elif marker[1] in _FRAME_MARKERS:
            frame = stream.read(8)  # length (2), precision (1), height (2), width (2), components (1)
            if len(frame) < 8:
                return None
            return int.from_bytes(frame[5:7], "big"), int.from_bytes(frame[3:5], "big"), frame[7]
        else:
            length = int.from_bytes(stream.read(2), "big")
            if length < 2:
                return None
            stream.seek(length - 2, os.SEEK_CUR)
    return None


_END_MARKERS = {"JPEG": b"\xff\xd9", "PNG": b"IEND\xaeB`\x82"}
_TAIL_BYTES = 4096  # cameras and editors may append a little data after the end marker


def quick_check(path: str | os.PathLike) -> tuple[int, tuple[int, int]]:
    """:func:`image_header` plus a look at the file's last bytes: (channels, (height, width)), cheap for any size.

    A JPEG or PNG whose end marker is missing from its last 4 KiB (a file cut short) is decoded in full
    (:func:`check_image`), so a truncated file fails here naming itself while the pixels of other files are left
    for training to decode. Data damaged in the middle of a file passes; training substitutes such a file when it
    meets it (:class:`vitkit.data.seeded.TransformedDataset`). A JPEG's header is read from its bytes
    (:func:`jpeg_frame`) without Pillow, which halves the time of a check; anything else goes through Pillow.
    """
    header = _jpeg_quick_check(path)
    if header is not None:
        return header
    with open_image(Path(path), Path(path)) as image:
        header, marker = (_channels_of(image.mode), (image.height, image.width)), _END_MARKERS.get(image.format or "")
    if marker is None or marker in _tail(path):
        return header
    return check_image(path)


_HEAD_BYTES = 8192  # a JPEG's frame header and a PNG's or GIF's header are within them unless EXIF is large


def read_ahead(paths: Iterable[str]) -> None:
    """Have the kernel start reading what :func:`quick_check` reads of each regular file (its first _HEAD_BYTES
    and last _TAIL_BYTES) for all of them at once (``POSIX_FADV_WILLNEED``): for a folder that is not in the page
    cache the reads are then in flight together, not one after another. Files that cannot be opened are left for
    the check to explain; FIFOs are opened without blocking and not read."""
    if not hasattr(os, "posix_fadvise"):
        return
    for path in paths:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        except OSError:
            continue
        try:
            info = os.fstat(fd)
            if stat.S_ISREG(info.st_mode):
                os.posix_fadvise(fd, 0, _HEAD_BYTES, os.POSIX_FADV_WILLNEED)
                os.posix_fadvise(fd, max(0, info.st_size - _TAIL_BYTES), _TAIL_BYTES, os.POSIX_FADV_WILLNEED)
        finally:
            os.close(fd)


def _tail(path: str | os.PathLike) -> bytes:
    with open(path, "rb") as file:
        file.seek(max(0, os.fstat(file.fileno()).st_size - _TAIL_BYTES))
        return file.read()


def _jpeg_quick_check(path: str | os.PathLike) -> tuple[int, tuple[int, int]] | None:
    """quick_check's answer for a sound JPEG under Pillow's pixel limit, from its bytes; None for anything else
    (not a JPEG, a frame header not found, too many pixels, no end marker, not a readable regular file), which
    Pillow then checks and explains. Only files named like JPEGs are tried, so that other files are not stat'ed
    twice."""
    if os.path.splitext(path)[1].lower() not in (".jpg", ".jpeg") or file_problem(Path(path)) is not None:
        return None
    with open(path, "rb") as file:
        if hasattr(os, "posix_fadvise"):  # no read-ahead: a file that is not in the page cache costs a few KiB of it
            os.posix_fadvise(file.fileno(), 0, 0, os.POSIX_FADV_RANDOM)
        frame = jpeg_frame(file)
        if frame is None:
            return None
        file.seek(max(0, os.fstat(file.fileno()).st_size - _TAIL_BYTES))
        tail = file.read()
    width, height, components = frame
    limit = Image.MAX_IMAGE_PIXELS
    if _END_MARKERS["JPEG"] not in tail or width * height == 0 or (limit is not None and width * height > limit):
        return None
    return (1 if components == 1 else 3), (height, width)


def check_images(
    paths: Sequence[str | os.PathLike], *, progress: bool = True
) -> tuple[list[tuple[int, tuple[int, int]] | None], list[str]]:
    """Decode every file once before any training: (header of each file, None if bad; one line per bad file).

    A folder with a bad file fails (or skips it) now, with the full list, rather than mid-epoch hours later.
    """
    headers: list[tuple[int, tuple[int, int]] | None] = []
    bad: list[str] = []
    bar = tqdm(paths, desc="checking images", unit="img", leave=False, disable=None if progress else True)
    for path in bar:
        try:
            headers.append(check_image(path))
        except ImageLoadError as exc:
            headers.append(None)
            bad.append(f"{exc.path}: {exc.reason}")
    return headers, bad


def find_image_files(folder: str | os.PathLike) -> tuple[list[Path], int]:
    """(entries named like images, count of other files) under ``folder``, recursively, in sorted order.

    Hidden files and folders are skipped. Symbolic links to folders are followed, each folder at most once, so a
    link back to a parent folder cannot make the walk endless. Entries named like images are returned even when
    they are not regular files (a FIFO, a broken link), so that the caller reports them rather than losing them.
    """
    paths, others = image_file_paths(folder)
    return [Path(path) for path in paths], others


def image_file_paths(folder: str | os.PathLike) -> tuple[list[str], int]:
    """:func:`find_image_files` as path strings: a million files are listed without a million Path objects."""
    images: list[str] = []
    others = 0
    seen: set[tuple[int, int]] = set()

    def walk(directory: str) -> None:
        nonlocal others
        try:
            info = os.stat(directory)
        except OSError:
            return
        if (info.st_dev, info.st_ino) in seen:
            logger.warning("not following %s again: a symbolic link leads back to a folder already read", directory)
            return
        seen.add((info.st_dev, info.st_ino))
        for entry in sorted(os.scandir(directory), key=lambda e: e.name):
            if entry.name.startswith("."):
                continue
            try:
                is_folder = entry.is_dir()  # follows links
            except OSError:  # a symbolic-link loop
                is_folder = False
            if is_folder:
                walk(entry.path)
            elif os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS:
                images.append(entry.path)
            else:
                others += 1

    walk(os.fspath(folder))
    return images, others
