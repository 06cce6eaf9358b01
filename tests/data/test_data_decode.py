"""decode_image: uploads in memory decode like files on disk, and size limits hold before any pixel is decoded."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vitkit.data import ImageLoadError, ImageTooLargeError, decode_image, load_image


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
        assert np.array_equal(np.asarray(decode_image(data, channels)), np.asarray(load_image(tmp_path / "image", channels)))


def test_pixel_limit_and_bad_bytes() -> None:
    data = encoded(Image.new("L", (50, 40)), "PNG")
    assert decode_image(data, 1, max_pixels=2000).size == (50, 40)
    with pytest.raises(ImageTooLargeError, match="upload.png as an image: 50x40 = 2,000 pixels is more than the limit of 1,999"):
        decode_image(data, 1, "upload.png", max_pixels=1999)
    with pytest.raises(ImageLoadError, match="cannot read notes as an image: not an image"):
        decode_image(b"plain text", 3, "notes")
    with pytest.raises(ImageLoadError, match="cannot read cut.png as an image: .*truncated"):
        decode_image(encoded(Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64), dtype=np.uint8)), "PNG")[:300], 1, "cut.png")


def test_pillow_decompression_bomb_is_too_large(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(ImageTooLargeError, match="decompression bomb"):
        decode_image(encoded(Image.new("L", (20, 20)), "PNG"), 1)  # 400 pixels: Pillow refuses beyond twice its limit
    with pytest.raises(ImageTooLargeError, match="decompression bomb"):
        decode_image(encoded(Image.new("L", (10, 15)), "PNG"), 1)  # 150 pixels: Pillow only warns; vitkit refuses
