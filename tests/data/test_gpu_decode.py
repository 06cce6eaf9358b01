"""Decoding batches on the training device (``decode="gpu"``), exercised on the CPU: the pixels are Pillow's within
JPEG decoder tolerance, and the training batches are those of the in-memory path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vitkit.data import build_data, load_image
from vitkit.data.gpu_decode import BatchDecoder, encoded
from vitkit.training.distributed import DistContext
from vitkit.training.loaders import Loaders

# libjpeg-turbo through torchvision and through Pillow: the same decoder (equal here), which builds may configure
# to upsample chroma differently by a level.
JPEG_TOLERANCE = 1


def photo(size: tuple[int, int], seed: int) -> Image.Image:
    """A smooth colour image (gradients plus a little noise): what JPEG is made for, unlike pure noise."""
    rng = np.random.default_rng(seed)
    height, width = size
    y, x = np.mgrid[0:height, 0:width] / max(size)
    channels = [
        np.sin(6 * x * rng.uniform(0.5, 2) + rng.uniform(0, 6)) * np.cos(5 * y * rng.uniform(0.5, 2)) for _ in "rgb"
    ]
    pixels = 127.5 + 110 * np.stack(channels, -1) + rng.normal(0, 6, (height, width, 3))
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8), "RGB")


@pytest.fixture(scope="module")
def jpeg_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """train/ and val/ of JPEGs of several sizes and aspect ratios, a grey one and a PNG among them."""
    root = tmp_path_factory.mktemp("jpegs")
    for c, name in enumerate(("a", "b")):
        for i in range(10):
            image = photo((40 + 3 * i, 56 - 2 * i), seed=20 * c + i)
            (root / "train" / name).mkdir(parents=True, exist_ok=True)
            if i == 3:
                image = image.convert("L")
            image.save(root / "train" / name / f"{i}.{'png' if i == 7 else 'jpg'}", quality=90)
        (root / "val" / name).mkdir(parents=True, exist_ok=True)
        photo((32, 32), seed=99 + c).save(root / "val" / name / "0.jpg")
    return root


@pytest.mark.parametrize("channels", [3, 1])
def test_decoded_pixels_are_pillows_within_jpeg_tolerance(jpeg_folder: Path, channels: int) -> None:
    square = sorted((jpeg_folder / "val").glob("*/*"))  # 32 x 32: decoded at the training size, without resizing
    side = 32
    decoded = BatchDecoder((side, side), channels, torch.device("cpu"))([encoded(f.read_bytes()) for f in square])
    for file, pixels in zip(square, decoded):
        expected = np.asarray(load_image(file, channels)).reshape(side, side, channels).transpose(2, 0, 1)
        difference = np.abs(pixels.numpy().astype(int) - expected.astype(int))
        assert difference.max() <= JPEG_TOLERANCE and difference.mean() < 0.1, file


def test_training_batches_equal_those_of_the_in_memory_path(jpeg_folder: Path) -> None:
    """The same seeded whole-batch augmentation: files decoded per batch on the device, or once into memory."""

    def first_batches(**options: object) -> list[tuple[torch.Tensor, torch.Tensor]]:
        data = build_data("folder", data_dir=jpeg_folder, image_size=24, seed=1, **options)
        loaders = Loaders(data, 8, 1, 0, seed=1, ctx=DistContext(), device=torch.device("cpu"),
                          decode="gpu" if data.memory is None else "cpu")  # fmt: skip
        assert (loaders.decoder is None) == (data.memory is not None)
        return list(loaders.epoch(2))

    on_device, in_memory = first_batches(cache="off"), first_batches(cache="on")
    assert len(on_device) == len(in_memory) == 2
    for (images, labels), (expected_images, expected_labels) in zip(on_device, in_memory):
        assert torch.equal(labels, expected_labels)
        # Normalised pixels (std ~0.3): the resizes of Pillow (memory) and of torch (device) round apart by a level or
        # two; another epoch's augmentation differs by ~1 on average.
        difference = (images - expected_images).abs()
        assert difference.mean() < 0.005 and difference.max() < 0.05
