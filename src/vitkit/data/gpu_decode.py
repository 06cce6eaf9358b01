"""Decoding whole batches of image files on the training device (``--decode gpu``), so workers only read bytes.

On a GPU, per-sample decoding and augmentation in CPU workers falls behind the model (ViT-B/16 trains at about
2,500 images/s on an H100, ViT-S/16 several times faster). Here the data loader's workers return each image file's
bytes; the training process decodes a batch's JPEGs at once with ``torchvision.io.decode_jpeg(..., device)``
(nvJPEG on CUDA), resizes each to the training size as a cached data set is (``build_decode_transform``), and the
batch is then augmented there by :class:`vitkit.data.batch_augment.BatchAugment`, seeded by (seed, epoch, step):
the batches equal those of the in-memory path, up to the JPEG decoders' rounding. Files that are not JPEGs (PNG,
WebP ...) and JPEGs that need an EXIF rotation (which nvJPEG does not apply) are decoded with Pillow on the CPU.
On a CPU device the same code decodes with libjpeg-turbo.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset, Subset

from vitkit.data.images import decode_image
from vitkit.data.transforms import build_decode_transform

logger = logging.getLogger(__name__)

_JPEG_START = b"\xff\xd8\xff"
_EXIF_ORIENTATION = 0x0112


def encoded(data: bytes) -> Tensor:
    """An image file's bytes as a uint8 tensor (what ``decode_jpeg`` takes, and what workers pass cheaply)."""
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


class EncodedImages(Dataset):
    """(file bytes as a uint8 tensor, class index) of each image of an image folder (a ``ClassFolder`` or a Subset of
    one) or of shards (``ShardSamples``): what the workers hand over when the device decodes."""

    def __init__(self, base: Dataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        data, label = _encoded_sample(self.base, index)
        return encoded(data), label


def _encoded_sample(dataset: Dataset, index: int) -> tuple[bytes, int]:
    if isinstance(dataset, Subset):
        return _encoded_sample(dataset.dataset, dataset.indices[index])
    if hasattr(dataset, "encoded"):  # ShardSamples
        return dataset.encoded(index)
    if hasattr(dataset, "samples"):  # ClassFolder
        path, label = dataset.samples[index]
        return Path(path).read_bytes(), int(label)
    raise TypeError(f"decode='gpu' reads image files; {type(dataset).__name__} holds none")


def collate_encoded(batch: Sequence[tuple[Tensor, int]]) -> tuple[list[Tensor], Tensor]:
    """A batch of (bytes, label) pairs as (list of byte tensors, labels): the files differ in length."""
    return [data for data, _ in batch], torch.tensor([label for _, label in batch], dtype=torch.int64)


def _upright_without_exif(data: Tensor) -> bool:
    """Whether a JPEG decodes upright without its EXIF orientation (no EXIF block, or orientation 1)."""
    head = data[:65536].numpy().tobytes()
    if b"Exif\x00\x00" not in head:
        return True
    with Image.open(io.BytesIO(data.numpy().tobytes())) as image:
        return image.getexif().get(_EXIF_ORIENTATION, 1) == 1


class BatchDecoder:
    """Image files' bytes -> uint8 (B, channels, height, width) on ``device``, at the training ``size``."""

    def __init__(self, size: tuple[int, int], channels: int, device: torch.device) -> None:
        from torchvision.io import ImageReadMode

        self.size, self.channels, self.device = size, channels, device
        self.mode = ImageReadMode.GRAY if channels == 1 else ImageReadMode.RGB
        self.resize = build_decode_transform(size, channels)
        # On a GPU, batches are decoded on a stream of their own, so that decoding overlaps the training step.
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        logger.info("decoding training batches on %s (torchvision decode_jpeg), workers only read files", device)

    def __call__(self, files: Sequence[Tensor]) -> Tensor:
        """The batch, ready to use on any stream of the device (callable from a thread of its own)."""
        if self.stream is None:
            return self._decode(files)
        with torch.cuda.stream(self.stream):
            images = self._decode(files)
        self.stream.synchronize()  # waits for this batch alone; the training stream keeps running
        return images

    def _decode(self, files: Sequence[Tensor]) -> Tensor:
        from torchvision.io import decode_jpeg

        on_device = [
            i for i, data in enumerate(files)
            if data[:3].numpy().tobytes() == _JPEG_START and (self.device.type != "cuda" or _upright_without_exif(data))
        ]  # fmt: skip
        images: list[Any] = [None] * len(files)
        if on_device:
            decoded = decode_jpeg([files[i] for i in on_device], mode=self.mode, device=self.device,
                                  apply_exif_orientation=True)  # fmt: skip
            for i, image in zip(on_device, decoded, strict=True):
                images[i] = image
        for i, image in enumerate(images):
            if image is None:  # not a JPEG, or a rotated one on CUDA: Pillow, as the CPU path decodes it
                pil = decode_image(files[i].numpy().tobytes(), self.channels, f"image {i} of the batch")
                images[i] = torch.from_numpy(_pil_array(pil)).to(self.device)
        return torch.stack([self.resize(image) for image in images])


def _pil_array(image: Image.Image) -> Any:
    import numpy as np

    array = np.asarray(image)
    return (array[None] if array.ndim == 2 else array.transpose(2, 0, 1)).copy()
