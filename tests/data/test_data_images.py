"""load_image / convert_image / image_header on real files of every mode, and on files that are not images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vitkit.data import ImageLoadError, image_header, load_image

MODES = ["L", "1", "LA", "RGB", "RGBA", "P", "I;16"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("channels", [1, 3])
def test_any_mode_loads_as_l_or_rgb(tmp_path: Path, image_file, mode: str, channels: int) -> None:
    path = image_file(tmp_path / "x.png", mode, size=(7, 5))
    image = load_image(path, channels)
    assert image.mode == ("L" if channels == 1 else "RGB")
    assert image.size == (7, 5)


def test_cmyk_jpeg_and_grey_jpeg(tmp_path: Path, image_file) -> None:
    cmyk = image_file(tmp_path / "cmyk.jpg", "CMYK")
    assert Image.open(cmyk).mode == "CMYK"
    assert load_image(cmyk, 3).mode == "RGB"
    assert load_image(image_file(tmp_path / "grey.jpg", "L"), 3).mode == "RGB"


def test_transparency_is_composited_on_white(tmp_path: Path) -> None:
    pixels = np.zeros((2, 2, 4), np.uint8)  # black...
    pixels[0, 0, 3] = 255  # ...opaque at (0, 0) only
    Image.fromarray(pixels, "RGBA").save(tmp_path / "a.png")
    rgb = np.asarray(load_image(tmp_path / "a.png", 3))
    assert rgb[0, 0].tolist() == [0, 0, 0]
    assert rgb[1, 1].tolist() == [255, 255, 255]
    assert np.asarray(load_image(tmp_path / "a.png", 1))[1, 1] == 255

    palette = Image.fromarray(np.array([[0, 1]], np.uint8), "P")
    palette.putpalette([10, 20, 30, 200, 200, 200])
    palette.save(tmp_path / "p.png", transparency=0)
    assert np.asarray(load_image(tmp_path / "p.png", 3))[0].tolist() == [[255, 255, 255], [200, 200, 200]]


def test_sixteen_bit_grey_is_scaled_not_clipped(tmp_path: Path) -> None:
    values = np.array([[0, 257 * 100, 65535]], np.uint16)
    Image.fromarray(values).save(tmp_path / "g16.png")
    assert np.asarray(load_image(tmp_path / "g16.png", 1)).tolist() == [[0, 100, 255]]


def test_32_bit_and_float_grey_are_scaled(tmp_path: Path) -> None:
    Image.fromarray(np.array([[0, 257 * 7, 65535]], np.int32)).save(tmp_path / "i32.tif")
    Image.fromarray(np.array([[0.0, 0.5, 1.0]], np.float32)).save(tmp_path / "f.tif")
    assert Image.open(tmp_path / "i32.tif").mode == "I" and Image.open(tmp_path / "f.tif").mode == "F"
    assert np.asarray(load_image(tmp_path / "i32.tif", 1)).tolist() == [[0, 7, 255]]
    assert np.asarray(load_image(tmp_path / "f.tif", 3))[0, :, 0].tolist() == [0, 128, 255]


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    Image.new("RGB", (8, 4)).save(tmp_path / "rot.jpg", exif=exif)
    assert load_image(tmp_path / "rot.jpg", 3).size == (4, 8)


def _truncated(tmp_path: Path, suffix: str) -> Path:
    good = tmp_path / f"good{suffix}"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(good)
    bad = tmp_path / f"truncated{suffix}"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    return bad


@pytest.mark.parametrize(
    "make_bad",
    [
        lambda tmp: (tmp / "text.png").write_text("not an image") and tmp / "text.png",
        lambda tmp: (tmp / "empty.jpg").write_bytes(b"") or tmp / "empty.jpg",
        lambda tmp: _truncated(tmp, ".png"),
        lambda tmp: _truncated(tmp, ".jpg"),
    ],
    ids=["text", "empty", "truncated-png", "truncated-jpeg"],
)
def test_unreadable_files_raise_image_load_error_naming_them(tmp_path: Path, make_bad) -> None:
    path = make_bad(tmp_path)
    with pytest.raises(ImageLoadError, match="expected a readable image") as info:
        load_image(path, 3)
    assert str(path) in str(info.value)
    assert isinstance(info.value, ValueError)


def test_missing_file_directory_and_bad_channels(tmp_path: Path, image_file) -> None:
    with pytest.raises(FileNotFoundError, match="nope.png"):
        load_image(tmp_path / "nope.png", 3)
    with pytest.raises(ImageLoadError, match="a folder, not a file"):
        load_image(tmp_path, 3)
    with pytest.raises(ValueError, match="channels must be 1 .* or 3 .*got 2"):
        load_image(image_file(tmp_path / "x.png"), 2)


@pytest.mark.parametrize(
    ("mode", "channels"), [("L", 1), ("1", 1), ("LA", 1), ("I;16", 1), ("RGB", 3), ("RGBA", 3), ("P", 3)]
)
def test_header_gives_channels_and_size(tmp_path: Path, image_file, mode: str, channels: int) -> None:
    assert image_header(image_file(tmp_path / "x.png", mode, size=(9, 4))) == (channels, (4, 9))


def test_header_of_non_image_raises(tmp_path: Path) -> None:
    (tmp_path / "x.png").write_text("hello")
    with pytest.raises(ImageLoadError, match="x.png"):
        image_header(tmp_path / "x.png")


def test_quick_check_reads_jpeg_headers_as_pillow_does_and_still_catches_cut_files(tmp_path: Path) -> None:
    """The JPEG fast path (header bytes, no Pillow) gives Pillow's answer for grey, colour, CMYK, progressive and
    EXIF-carrying JPEGs; a JPEG cut short, and one over Pillow's pixel limit, still fail naming the file."""
    from vitkit.data.images import ImageTooLargeError, quick_check

    rng = np.random.default_rng(0)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: the stored (not the upright) size is the header's, as Pillow reports it
    cases = {"L": {}, "RGB": {"progressive": True}, "CMYK": {}, "RGB-exif": {"exif": exif.tobytes()}}
    for name, options in cases.items():
        mode = name.split("-")[0]
        pixels = rng.integers(0, 256, (37, 53, len(mode)) if mode != "L" else (37, 53), dtype=np.uint8)
        path = tmp_path / f"{name}.jpg"
        Image.fromarray(pixels, mode).save(path, quality=90, **options)
        assert quick_check(path) == image_header(path) == ((1 if mode == "L" else 3), (37, 53))
    cut = tmp_path / "cut.jpg"
    cut.write_bytes((tmp_path / "RGB.jpg").read_bytes()[:-200])
    with pytest.raises(ImageLoadError, match="cut.jpg"):
        quick_check(cut)
    big = tmp_path / "big.jpg"
    data = bytearray((tmp_path / "L.jpg").read_bytes())
    frame = data.index(b"\xff\xc0") if b"\xff\xc0" in data else data.index(b"\xff\xc2")
    data[frame + 5 : frame + 9] = (60000).to_bytes(2, "big") + (60000).to_bytes(2, "big")  # 3.6 gigapixels declared
    big.write_bytes(bytes(data))
    with pytest.raises(ImageTooLargeError, match="big.jpg"):
        quick_check(big)
