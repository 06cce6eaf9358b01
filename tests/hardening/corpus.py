"""A corpus of bad and awkward inputs, written by the tests themselves: every way a real folder goes wrong.

``write_corpus(folder)`` returns {name: path} for GOOD (awkward but valid: each must be predicted) and BAD (each must
be reported, naming the file and the reason) entries. Tests run as root here, where ``chmod 000`` does not stop a
read; the "unreadable" entries are therefore ones no user can read: a FIFO (opening it would block forever), a
broken symbolic link and a symbolic-link loop. A chmod-000 file is added only when the tests run as another user.
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

# name -> words the reported reason must contain
BAD_REASONS = {
    "zero_bytes.jpg": "empty file",
    "text_renamed.jpg": "not an image",
    "truncated.png": "truncated",
    "truncated.jpg": "truncated",
    "bomb_warned.png": "decompression bomb",  # between Pillow's limit and twice it: Pillow itself only warns
    "bomb_refused.png": "decompression bomb",  # over twice the limit: Pillow refuses it
    "link_loop_a.png": "symbolic link loop",
    "link_loop_b.png": "symbolic link loop",
    "dangling_link.png": "broken symbolic link",
    "fifo.png": "FIFO",
}
GOOD = (
    "plain.png", "grey16.png", "cmyk.jpg", "animated.gif", "palette_transparent.png", "exif_rotated.jpg", "huge.jpg",
)  # fmt: skip
NON_IMAGES = ("notes.txt", "labels.csv", ".DS_Store")


def _noise(height: int, width: int, channels: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, channels), dtype=np.uint8)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def write_bomb(path: Path, side: int) -> Path:
    """A real, valid, all-black 1-bit PNG of side x side pixels that compresses to a few kilobytes."""
    row = b"\x00" * (1 + (side + 7) // 8)  # filter byte + packed bits
    compressor = zlib.compressobj(9)
    data = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # width, height, 1 bit, grey, no interlace
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", data)
                     + _png_chunk(b"IEND", b""))  # fmt: skip
    return path


def _truncated(path: Path, image: Image.Image) -> Path:
    image.save(path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


def write_good(folder: Path) -> dict[str, Path]:
    """The awkward but valid files (see GOOD)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {name: folder / name for name in GOOD}
    Image.fromarray(_noise(10, 12, 3, 0)).save(paths["plain.png"])
    grey16 = np.arange(80, dtype=np.uint16).reshape(8, 10) * 829  # up to 65491: really 16 bits
    Image.fromarray(grey16).save(paths["grey16.png"])
    Image.fromarray(_noise(10, 12, 4, 1), "CMYK").save(paths["cmyk.jpg"])
    frames = [Image.new("RGB", (12, 10), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(paths["animated.gif"], save_all=True, append_images=frames[1:], duration=100, loop=0)
    palette = Image.fromarray(_noise(10, 12, 3, 2)).quantize(8)
    palette.info["transparency"] = 0
    palette.save(paths["palette_transparent.png"], transparency=0)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    Image.fromarray(_noise(8, 16, 3, 3)).save(paths["exif_rotated.jpg"], exif=exif)
    Image.fromarray(np.full((3000, 4000, 3), 128, np.uint8)).save(paths["huge.jpg"])  # 12 megapixels
    return paths


def write_bad(folder: Path) -> dict[str, Path]:
    """The files that cannot be read (see BAD_REASONS), plus a chmod-000 file when not running as root."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {name: folder / name for name in BAD_REASONS}
    paths["zero_bytes.jpg"].write_bytes(b"")
    paths["text_renamed.jpg"].write_text("this is a text file with an image's name\n")
    _truncated(paths["truncated.png"], Image.fromarray(_noise(64, 64, 3, 4)))
    _truncated(paths["truncated.jpg"], Image.fromarray(_noise(64, 64, 3, 5)))
    limit = Image.MAX_IMAGE_PIXELS
    write_bomb(paths["bomb_warned.png"], int((1.2 * limit) ** 0.5))
    write_bomb(paths["bomb_refused.png"], int((2.2 * limit) ** 0.5))
    os.symlink("link_loop_b.png", paths["link_loop_a.png"])
    os.symlink("link_loop_a.png", paths["link_loop_b.png"])
    os.symlink("no_such_target.png", paths["dangling_link.png"])
    os.mkfifo(paths["fifo.png"])
    if os.geteuid() != 0:
        locked = folder / "no_permission.png"
        Image.new("RGB", (4, 4)).save(locked)
        locked.chmod(0)
        paths["no_permission.png"] = locked
    return paths


def bad_reason(name: str) -> str:
    return BAD_REASONS.get(name, "permission denied")


def write_corpus(folder: Path) -> tuple[dict[str, Path], dict[str, Path]]:
    """(good, bad) files in one folder, with non-image files and a symbolic link back to the folder itself."""
    good, bad = write_good(folder), write_bad(folder)
    for name in NON_IMAGES:
        (folder / name).write_text("not an image, and not named like one\n")
    (folder / "sub").mkdir()
    os.symlink("..", folder / "sub" / "back_to_parent")  # a folder loop: must not make the walk endless
    return good, bad
