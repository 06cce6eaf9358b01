"""Reading image files of any mode into the 1- or 3-channel images a model expects."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Modes whose pixels carry no colour. "LA"/"La" are grey plus alpha; "I;16*", "I" and "F" are high-bit-depth grey.
GRAYSCALE_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_HIGH_DEPTH_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
_EXPECTED = "expected a readable image file (PNG, JPEG, BMP, GIF, TIFF, WebP, ...)"


class ImageLoadError(ValueError):
    """A file could not be decoded as an image; the message names the file."""


class ImageTooLargeError(ImageLoadError):
    """An image declares more pixels than the caller allows."""


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


def _open_error(path: str | Path, exc: Exception) -> ImageLoadError:
    # PIL's own message for an unknown format names the file object, which says nothing for bytes in memory.
    detail = "not a known image format" if isinstance(exc, UnidentifiedImageError) else f"{type(exc).__name__}: {exc}"
    return ImageLoadError(f"cannot read {path} as an image ({detail}); {_EXPECTED}")


def load_image(path: str | os.PathLike, channels: int) -> Image.Image:
    """Decode an image file fully and return it in mode "L" (channels=1) or "RGB" (channels=3).

    The whole file is decoded here (not lazily) so that a corrupt or truncated file fails with an
    :class:`ImageLoadError` naming it, instead of a PIL error deep inside a data loader. EXIF orientation is applied
    so photos come out upright.
    """
    _check_channels(channels)
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"image file {path} does not exist")
    if not path.is_file():
        raise ImageLoadError(f"{path} is not a file; {_EXPECTED}")
    return _decode(path, path, channels)


def decode_image(data: bytes, channels: int, name: str = "image", max_pixels: int | None = None) -> Image.Image:
    """`load_image` for bytes already in memory (an upload); `name` only labels error messages.

    With `max_pixels`, an image whose header declares more pixels raises :class:`ImageTooLargeError` before any
    pixel is decoded, so a small file cannot make the caller allocate a huge image.
    """
    _check_channels(channels)
    return _decode(io.BytesIO(data), name, channels, max_pixels)


def _decode(source: Path | BinaryIO, name: str | Path, channels: int, max_pixels: int | None = None) -> Image.Image:
    try:
        with Image.open(source) as image:
            width, height = image.size
            if max_pixels is not None and width * height > max_pixels:
                raise ImageTooLargeError(
                    f"{name} is {width}x{height} = {width * height} pixels, more than the limit of {max_pixels}"
                )
            image.load()
            ImageOps.exif_transpose(image, in_place=True)
    except ImageTooLargeError:
        raise
    except Image.DecompressionBombError as exc:  # PIL's own limit, for headers beyond twice Image.MAX_IMAGE_PIXELS
        raise ImageTooLargeError(f"{name}: {exc}") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise _open_error(name, exc) from exc
    return convert_image(image, channels)


def image_header(path: str | os.PathLike) -> tuple[int, tuple[int, int]]:
    """(channels, (height, width)) read from the file's header alone (PIL opens lazily), so scanning is cheap.

    channels is 1 when the mode is one of GRAYSCALE_MODES (grey, grey+alpha, 1-bit, 16-bit, float) and 3 otherwise;
    palette images count as colour even when their palette happens to be grey.
    """
    path = Path(path)
    try:
        with Image.open(path) as image:
            mode, (width, height) = image.mode, image.size
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise _open_error(path, exc) from exc
    return (1 if mode in GRAYSCALE_MODES else 3), (height, width)
