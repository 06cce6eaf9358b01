"""Decoding only what a crop needs: training's random resized crop and evaluation's centre crop, straight from an
image file to the normalised tensor the model takes.

The crop is chosen from the image's size, read from its header. A training crop of a JPEG too small for any crop
to be twice the output size is decoded by libjpeg-turbo (``torchvision.io.decode_jpeg``, the size read from the
frame header without Pillow) and cut and resampled on uint8 by torchvision's antialiased filter. A JPEG whose crop
is at least twice the output size in both directions is decoded at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling,
Pillow's ``Image.draft``), still at least the output size; other formats shrink by whole factors first (Pillow's
``reducing_gap``). Pillow's crop and resize are one resampling pass (``Image.resize`` with a ``box``), the flip
is one of the small output, and ``ToDtype`` + ``Normalize`` one multiply-subtract (:class:`Normalise`), which
training runs on whole uint8 batches on its device: the workers send a quarter of float32's bytes.

The distribution is that of the transforms.v2 pipeline (:func:`vitkit.data.transforms.build_train_transform`):
the crop and the flip are drawn by torchvision's own ``RandomResizedCrop.get_params`` and the same ``torch.rand``
draw as ``RandomHorizontalFlip``, in the same order, so a seeded sample gets the same crop and flip either way.
Resampling differs slightly: a reduced JPEG is resampled from the 1/s-scale DCT image (DCT scaling averages each
s x s block, then Pillow's bilinear filter covers the rest of the reduction), torchvision's antialiased bilinear
filter is not Pillow's to the last level, a grey image from a colour JPEG is libjpeg's luma, and pixels at the
crop's border are filtered with their neighbours outside the crop rather than clamped to it;
tests/data/test_data_decode.py bounds the difference.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import PIL.Image
import torch
from PIL import ImageOps
from torchvision.io import ImageReadMode, decode_jpeg, read_file
from torchvision.transforms import RandomResizedCrop
from torchvision.transforms.v2 import functional as F

from vitkit.data.augment_config import AugmentConfig
from vitkit.data.images import (
    JPEG_HEADER_BYTES,
    ImageFile,
    convert_image,
    file_problem,
    jpeg_frame,
    load_error,
    open_image,
)
from vitkit.data.transforms import INTERPOLATIONS, resize_size
from vitkit.model.config import to_pair

logger = logging.getLogger(__name__)

_RESAMPLE = {
    "nearest": PIL.Image.Resampling.NEAREST,
    "bilinear": PIL.Image.Resampling.BILINEAR,
    "bicubic": PIL.Image.Resampling.BICUBIC,
}
_DCT_SCALES = (8, 4, 2)
_REDUCING_GAP = 3.0  # Pillow: shrink by whole factors first while at least 3x remains (within ~1 level of exact)
_ORIENTATION = 0x0112
_TRANSPOSED = frozenset({5, 6, 7, 8})  # EXIF orientations that swap width and height
Box = tuple[float, float, float, float]  # left, top, right, bottom in the upright image's pixels


class Normalise:
    """uint8 images (..., channels, h, w) on any device -> float32 ``(x / 255 - mean) / std``, computed as one
    multiply-subtract (``x * scale - shift``) so that a worker and the training device give the same bits."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        std_t = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
        self.scale = 1.0 / (255.0 * std_t)
        self.shift = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1) / std_t

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        if pixels.dtype != torch.uint8:
            raise ValueError(f"expected uint8 pixels to normalise, got {pixels.dtype}")
        scale, shift = self.scale.to(pixels.device), self.shift.to(pixels.device)
        return pixels.float().mul_(scale).sub_(shift)


class RegionDecoder:
    """ImageFile (or PIL image) -> normalised float tensor (channels, h, w) of a region chosen from the image size.

    Subclasses choose the region (:meth:`region`); this class decodes no more of the file than the region needs.
    """

    integer_regions = False  # whether regions have whole-pixel edges (then torchvision may crop and resample)

    def __init__(
        self, size: int | Sequence[int], channels: int, mean: Sequence[float], std: Sequence[float],
        interpolation: str = "bilinear",
    ) -> None:  # fmt: skip
        if channels not in (1, 3) or len(mean) != channels or len(std) != channels:
            raise ValueError(f"expected 1 or 3 channels with one mean and std each, got {channels}, {mean}, {std}")
        if interpolation not in _RESAMPLE:
            raise ValueError(f"interpolation must be one of {list(_RESAMPLE)}, got {interpolation!r}")
        self.size = to_pair(size, "size")
        self.channels = channels
        self.resample, self.interpolation = _RESAMPLE[interpolation], INTERPOLATIONS[interpolation]
        self.normalise = Normalise(mean, std)

    def region(self, width: int, height: int) -> tuple[Box, bool]:
        """(box of the upright image to resample to ``size``, whether to flip it left-right)."""
        raise NotImplementedError

    def __call__(self, inpt: ImageFile | PIL.Image.Image) -> torch.Tensor:
        return self.normalise(self.pixels(inpt))

    def pixels(self, inpt: ImageFile | PIL.Image.Image) -> torch.Tensor:
        """The region as uint8 (channels, h, w), flipped where drawn, not yet normalised: what training's workers
        hand over, a quarter of float32's bytes, for :attr:`normalise` to finish on the training device."""
        if isinstance(inpt, PIL.Image.Image):
            image = convert_image(inpt, self.channels)
            box, flip = self.region(*image.size)
            pixels = self._resampled(image, box, None)
        else:
            pixels, flip = self._decode(inpt)
        return pixels.flip(-1) if flip else pixels

    def _resampled(self, image: PIL.Image.Image, box: Box, reducing_gap: float | None) -> torch.Tensor:
        """uint8 (channels, h, w): ``box`` of ``image`` resampled to the output size by Pillow."""
        height, width = self.size
        out = np.array(image.resize((width, height), self.resample, box=box, reducing_gap=reducing_gap))
        pixels = torch.from_numpy(out)
        return pixels.unsqueeze(0) if pixels.ndim == 2 else pixels.permute(2, 0, 1)

    def _decode(self, file: ImageFile) -> tuple[torch.Tensor, bool]:
        """(uint8 (channels, h, w) of the region of the upright image, whether to flip it), decoding no more than
        the region needs: a JPEG too small for DCT scaling to help through libjpeg-turbo
        (``torchvision.io.decode_jpeg``) where :attr:`integer_regions` holds, else through Pillow, a JPEG at a
        reduced DCT scale when the region allows one."""
        if self.integer_regions:
            pixels = self._small_jpeg(file.path)
            if pixels is not None:
                box, flip = self.region(pixels.shape[-1], pixels.shape[-2])
                left, top, right, bottom = (int(v) for v in box)
                out = F.resized_crop(pixels, top, left, bottom - top, right - left, list(self.size),
                                     interpolation=self.interpolation, antialias=True)  # fmt: skip
                return out, flip
        with open_image(Path(file.path), file.path) as image:
            orientation = image.getexif().get(_ORIENTATION, 1) if image.format in ("JPEG", "TIFF", "WEBP") else 1
            width, height = image.size[::-1] if orientation in _TRANSPOSED else image.size
            box, flip = self.region(width, height)
            jpeg = image.format == "JPEG"
            if jpeg and orientation == 1:
                box = self._draft(image, box)
            image.load()
            if orientation != 1:
                ImageOps.exif_transpose(image, in_place=True)
            return self._resampled(convert_image(image, self.channels), box, None if jpeg else _REDUCING_GAP), flip

    def _small_jpeg(self, path: str) -> torch.Tensor | None:
        """The upright uint8 (channels, H, W) of a grey or colour JPEG too small for any crop of it to be twice the
        output size (so DCT scaling cannot help), decoded by libjpeg-turbo; None for any other file (Pillow's)."""
        problem = file_problem(Path(path))
        if problem is not None:
            raise load_error(path, problem)
        data = read_file(path)
        size = jpeg_frame(io.BytesIO(data[:JPEG_HEADER_BYTES].numpy().tobytes()))  # not the whole file
        if size is None:
            return None
        width, height, components = size
        twice_h, twice_w = 2 * self.size[0], 2 * self.size[1]
        if components not in (1, 3) or PIL.Image.MAX_IMAGE_PIXELS and width * height > PIL.Image.MAX_IMAGE_PIXELS:
            return None  # CMYK, or a decompression bomb, which Pillow refuses with its reason
        if (width >= twice_w and height >= twice_h) or (height >= twice_w and width >= twice_h):
            return None
        mode = ImageReadMode.RGB if self.channels == 3 else ImageReadMode.GRAY
        try:
            return decode_jpeg(data, mode=mode, apply_exif_orientation=True)
        except RuntimeError as exc:
            raise load_error(path, f"damaged image data (libjpeg: {exc})") from exc

    def _dct_scale(self, box: Box) -> int:
        """The largest JPEG DCT scaling (8, 4, 2, else 1) that keeps ``box`` at least the output size."""
        height, width = self.size
        factor = min((box[2] - box[0]) / width, (box[3] - box[1]) / height)
        return next((s for s in _DCT_SCALES if s <= factor), 1)

    def _draft(self, image: PIL.Image.Image, box: Box) -> Box:
        """Ask libjpeg for the largest DCT scaling that keeps the region at least the output size; the box in it."""
        scale = self._dct_scale(box)
        if scale == 1:
            return box
        original_width = image.width
        drafted = image.draft(None, (image.width // scale, image.height // scale))
        if drafted is None:  # not a baseline single-tile JPEG: decoded in full
            return box
        reduced = original_width / drafted[1][2]  # draft's box is (0, 0, width / s, height / s)
        return (box[0] / reduced, box[1] / reduced, box[2] / reduced, box[3] / reduced)


class RandomCropDecoder(RegionDecoder):
    """RandomResizedCrop(size, scale, ratio) + RandomHorizontalFlip(hflip) + ToDtype + Normalize, decoding at the
    crop's scale: the same draws as the transforms.v2 pipeline (see the module's docstring)."""

    integer_regions = True

    def __init__(
        self, size: int | Sequence[int], channels: int, mean: Sequence[float], std: Sequence[float],
        scale: tuple[float, float], hflip: float, ratio: tuple[float, float] = (3 / 4, 4 / 3),
    ) -> None:  # fmt: skip
        super().__init__(size, channels, mean, std)
        self.crop_scale, self.ratio, self.hflip = list(scale), list(ratio), hflip

    def region(self, width: int, height: int) -> tuple[Box, bool]:
        # get_params reads only the size of what it is given: a broadcast view of one element has it, allocation-free
        top, left, h, w = RandomResizedCrop.get_params(
            torch.empty(1, 1, 1).expand(1, height, width), self.crop_scale, self.ratio
        )
        flip = self.hflip > 0 and bool(torch.rand(1) < self.hflip)
        return (left, top, left + w, top + h), flip


class CentreCropDecoder(RegionDecoder):
    """The evaluation transform (:func:`vitkit.data.transforms.build_eval_transform`: resize, centre crop,
    normalise) as one region: the centre crop of the resized image mapped back onto the file's pixels."""

    def __init__(
        self, size: int | Sequence[int], channels: int, mean: Sequence[float], std: Sequence[float], *,
        interpolation: str = "bilinear", crop_pct: float = 1.0, crop_mode: str = "center",
    ) -> None:  # fmt: skip
        super().__init__(size, channels, mean, std, interpolation)
        self.crop_pct, self.crop_mode = crop_pct, crop_mode

    def region(self, width: int, height: int) -> tuple[Box, bool]:
        out_h, out_w = self.size
        if self.crop_mode == "squash":
            new_h, new_w = resize_size(out_h, self.crop_pct), resize_size(out_w, self.crop_pct)
        else:  # torchvision's Resize(int): the shorter side to the size, the longer in proportion, truncated
            short = resize_size(max(self.size), self.crop_pct)
            new_w, new_h = (
                (short, int(short * height / width)) if width <= height else (int(short * width / height), short)
            )
        top, left = round((new_h - out_h) / 2.0), round((new_w - out_w) / 2.0)  # CenterCrop's rounding
        sx, sy = width / new_w, height / new_h
        return (left * sx, top * sy, (left + out_w) * sx, (top + out_h) * sy), False


def train_decoder(
    size: int | Sequence[int], channels: int, mean: Sequence[float], std: Sequence[float], aug: AugmentConfig
) -> RandomCropDecoder | None:
    """The decoder for ``aug`` when it is a random resized crop and flip only (the image-folder default), else None
    (affine and automatic augmentation need the decoded image: the transforms.v2 pipeline)."""
    if aug.crop_scale_min >= 1.0 or aug.affine_degrees or aug.affine_translate or aug.affine_scale:
        return None
    if aug.auto_augment != "none" or aug.random_erasing:
        return None
    return RandomCropDecoder(size, channels, mean, std, (aug.crop_scale_min, 1.0), aug.hflip)
