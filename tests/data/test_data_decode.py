"""decode_image: uploads in memory decode like files on disk, and size limits hold before any pixel is decoded.
vitkit.data.decode: decoding only what the crop needs gives the transforms.v2 pipelines' crops, flips and pixels."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, JpegImagePlugin
from torchvision.transforms import v2

from vitkit.data import (
    AugmentConfig,
    ImageLoadError,
    ImageTooLargeError,
    decode_image,
    load_image,
)
from vitkit.data.decode import CentreCropDecoder, Normalise, RandomCropDecoder, train_decoder
from vitkit.data.images import ImageFile
from vitkit.data.transforms import build_eval_transform, build_train_transform

MEAN, STD = (0.45, 0.5, 0.55), (0.2, 0.25, 0.3)


def encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.mark.parametrize("mode, fmt", [("RGBA", "PNG"), ("L", "JPEG"), ("P", "GIF")])
def test_bytes_decode_as_the_same_file_loads(mode: str, fmt: str, tmp_path: Path) -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (12, 10, 4), dtype=np.uint8)
    data = encoded(Image.fromarray(pixels, "RGBA").convert(mode), fmt)
    (tmp_path / "image").write_bytes(data)
    for channels in (1, 3):
        assert np.array_equal(
            np.asarray(decode_image(data, channels)), np.asarray(load_image(tmp_path / "image", channels))
        )


def test_pixel_limit_and_bad_bytes() -> None:
    data = encoded(Image.new("L", (50, 40)), "PNG")
    assert decode_image(data, 1, max_pixels=2000).size == (50, 40)
    with pytest.raises(
        ImageTooLargeError, match="upload.png as an image: 50x40 = 2,000 pixels is more than the limit of 1,999"
    ):
        decode_image(data, 1, "upload.png", max_pixels=1999)
    with pytest.raises(ImageLoadError, match="cannot read notes as an image: not an image"):
        decode_image(b"plain text", 3, "notes")
    with pytest.raises(ImageLoadError, match="cannot read cut.png as an image: .*truncated"):
        decode_image(
            encoded(Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64), dtype=np.uint8)), "PNG")[:300],
            1,
            "cut.png",
        )


def test_pillow_decompression_bomb_is_too_large(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(ImageTooLargeError, match="decompression bomb"):
        decode_image(encoded(Image.new("L", (20, 20)), "PNG"), 1)  # 400 pixels: Pillow refuses beyond twice its limit
    with pytest.raises(ImageTooLargeError, match="decompression bomb"):
        decode_image(encoded(Image.new("L", (10, 15)), "PNG"), 1)  # 150 pixels: Pillow only warns; vitkit refuses


def photo(path: Path, width: int, height: int, seed: int = 0, **save: object) -> Path:
    """A smooth picture with edges and a little noise (as photos are), saved as JPEG at quality 90."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    pixels = np.stack([200 * x + 30, 180 * y + 40, 120 * (x + y) % 255], axis=-1)
    pixels[height // 3 : height // 2, width // 4 : width // 2] = (240, 30, 60)
    pixels += rng.normal(0, 4, pixels.shape)
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=90, **save)
    return path


def pixel_difference(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """|a - b| of two normalised images, in 0..255 pixel levels."""
    return (a - b).abs() * torch.tensor(STD).view(-1, 1, 1) * 255


def test_random_crop_decoder_draws_the_v2_pipelines_crops_and_flips(tmp_path: Path) -> None:
    file = ImageFile(photo(tmp_path / "a.jpg", 90, 70))  # crops smaller than twice 48: decoded in full
    reference = build_train_transform(48, 3, MEAN, STD, AugmentConfig(crop_scale_min=0.08, hflip=0.5))
    decoder = RandomCropDecoder(48, 3, MEAN, STD, (0.08, 1.0), 0.5)
    flips = 0
    for seed in range(12):
        torch.manual_seed(seed)
        expected = reference(file)
        torch.manual_seed(seed)
        got = decoder(file)
        assert got.shape == expected.shape == (3, 48, 48)
        # The same crop and flip; only pixels at the crop's border are filtered with their outside neighbours.
        inner = pixel_difference(got, expected)[:, 2:-2, 2:-2]
        assert inner.max() <= 1.01, f"seed {seed}: {inner.max()}"
        torch.manual_seed(seed)
        unflipped = build_train_transform(48, 3, MEAN, STD, AugmentConfig(crop_scale_min=0.08, hflip=0.0))(file)
        flips += bool(pixel_difference(got, unflipped).mean() > 2)
    assert 3 <= flips <= 9, "both flipped and unflipped samples, as p = 0.5 gives"
    assert train_decoder(48, 3, MEAN, STD, AugmentConfig(crop_scale_min=0.5, hflip=0.5)) is not None
    assert train_decoder(48, 3, MEAN, STD, AugmentConfig(crop_scale_min=0.5, auto_augment="randaugment")) is None


def test_a_crop_decoded_at_a_reduced_dct_scale_matches_the_full_decode_resized(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    file = ImageFile(photo(tmp_path / "big.jpg", 640, 480))
    scales = []
    draft = JpegImagePlugin.JpegImageFile.draft

    def spy(image, mode, size):
        result = draft(image, mode, size)
        scales.append(image.decoderconfig[0])
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    decoder = RandomCropDecoder(32, 3, MEAN, STD, (0.5, 1.0), 0.0)
    full = np.asarray(load_image(file.path, 3))
    for seed in range(4):
        torch.manual_seed(seed)
        got = decoder(file)
        torch.manual_seed(seed)
        box, _ = decoder.region(640, 480)
        exact = Image.fromarray(full).resize((32, 32), Image.Resampling.BILINEAR, box=box)
        expected = torch.from_numpy(np.array(exact)).permute(2, 0, 1) / 255 - torch.tensor(MEAN).view(3, 1, 1)
        expected /= torch.tensor(STD).view(3, 1, 1)
        difference = pixel_difference(got, expected)
        assert difference.mean() < 2.0 and difference.max() < 24, (seed, difference.mean(), difference.max())
    assert scales and min(scales) >= 4, f"crops of >= 320 px to 32 px decode at 1/4 or 1/8 scale, got {scales}"


@pytest.mark.parametrize(
    "resize", [{}, {"crop_mode": "squash", "crop_pct": 0.875}, {"interpolation": "bicubic", "crop_pct": 0.9}]
)
def test_centre_crop_decoder_gives_the_eval_transforms_pixels(tmp_path: Path, resize: dict) -> None:
    file = ImageFile(photo(tmp_path / "a.jpg", 77, 61))
    expected = build_eval_transform(40, 3, MEAN, STD, **resize)(file)
    got = CentreCropDecoder(40, 3, MEAN, STD, **resize)(file)
    assert got.shape == expected.shape == (3, 40, 40)
    assert pixel_difference(got, expected).mean() < 0.3 and pixel_difference(got, expected).max() <= 6


def test_decoders_turn_photos_upright_and_give_the_channels_asked_for(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    file = ImageFile(photo(tmp_path / "rotated.jpg", 60, 40, exif=exif))
    for channels in (1, 3):
        mean, std = MEAN[:channels], STD[:channels]
        expected = build_eval_transform((30, 20), channels, mean, std, crop_mode="squash")(file)
        got = CentreCropDecoder((30, 20), channels, mean, std, crop_mode="squash")(file)
        assert got.shape == expected.shape == (channels, 30, 20)
        assert (got - expected).abs().mean() * 255 * STD[0] < 0.5
        # Training crops of a small JPEG skip Pillow (libjpeg-turbo turns it): the same upright crop all the same.
        torch.manual_seed(channels)
        expected = build_train_transform(24, channels, mean, std, AugmentConfig(crop_scale_min=0.3, hflip=0.5))(file)
        torch.manual_seed(channels)
        got = RandomCropDecoder(24, channels, mean, std, (0.3, 1.0), 0.5)(file)
        assert (got - expected).abs().mean() * 255 * STD[0] < 1.0


def test_normalise_equals_torchvisions_to_dtype_and_normalize_on_uint8_batches() -> None:
    pixels = torch.randint(0, 256, (4, 3, 9, 7), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    expected = v2.Normalize(MEAN, STD)(v2.ToDtype(torch.float32, scale=True)(pixels))
    got = Normalise(MEAN, STD)(pixels)
    assert got.dtype == torch.float32 and torch.allclose(got, expected, atol=1e-5)
    with pytest.raises(ValueError, match="expected uint8 pixels to normalise, got torch.float32"):
        Normalise(MEAN, STD)(expected)
