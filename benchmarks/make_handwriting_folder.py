"""Write a harder 28x28 digit folder (ImageFolder layout): distorted digits from offline sources, 7,000 + 1,600.

What it is: a stand-in for a real handwriting set of 28x28 grey digits (7,000 training and 1,600 test images),
hard enough that training recipes differ on it. Each image starts from one of two sources, about half and half:

- one of scikit-learn's 1,797 8x8 handwritten digits, upsampled into a box of 16 to 22 pixels;
- a digit drawn with one of the TrueType fonts installed on the machine (``fc-list``: DejaVu, Liberation, ...),
  fitted into the same box.

It is then varied as handwriting varies: stroke width (a grey-scale dilation or erosion before the digit is
shrunk), slant (shear up to 0.25), rotation, scale and position jitter, an elastic distortion (Simard, Steinkraus
and Platt, 2003: a random displacement field smoothed by a Gaussian of sigma 4 px, scaled by alpha 12 px, a third
of the paper's augmentation, so that the digits stay readable: at alpha 34 an RBF SVC on the pixels reads only
72 % of the test digits), uneven ink intensity, and clutter: stray strokes, a fragment of another digit at the
border, blotches and pixel noise. As a yardstick of difficulty, an RBF SVC on 60 principal components of the
pixels reads about 90 % of its test digits, against 97 % of make_digits_folder.py's.
The test images come from other sources than the training images: scikit-learn's held-out 20 % of the digits,
and fonts no training image uses, with other random seeds.

What it is not: real handwriting. Font digits vary less than writers do, scikit-learn's digits come from a few
dozen writers and were scanned at 8x8, and the clutter is synthetic. Accuracies on it rank recipes, they do not
predict MNIST-like accuracies. It needs no download.

    python benchmarks/make_handwriting_folder.py OUT_DIR [--train-per-class 700] [--test-per-class 160] [--seed 0]
"""

from __future__ import annotations

import argparse
import math
import subprocess
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

BOX = 20  # the digit's box inside the 28x28 image, as MNIST centres it
SIZE = 28
FONT_TEST_SHARE = 4  # every 4th installed font draws test digits only


def installed_fonts() -> list[str]:
    """TrueType/OpenType font files installed on the machine, sorted (fc-list)."""
    listing = subprocess.run(["fc-list", "--format", "%{file}\n"], capture_output=True, text=True, check=True).stdout
    fonts = sorted({line for line in listing.splitlines() if line.lower().endswith((".ttf", ".otf"))})
    if not fonts:
        raise RuntimeError("fc-list lists no TrueType/OpenType fonts: install fonts-dejavu or similar")
    return fonts


def fit_box(image: np.ndarray, box: int, stroke: int) -> torch.Tensor:
    """A grey image (ink bright) cropped to its ink, thickened (stroke > 0) or thinned (< 0) at its own size,
    fitted into ``box`` pixels keeping its aspect ratio, and placed at its centre of mass in a SIZE x SIZE image."""
    picture = Image.fromarray(image)
    if stroke:
        from PIL import ImageFilter

        filt = ImageFilter.MaxFilter if stroke > 0 else ImageFilter.MinFilter
        thinned = picture.filter(filt(2 * abs(stroke) + 1))
        if stroke > 0 or np.asarray(thinned).max() > 96:  # thinning must not erase the digit
            picture = thinned
    ys, xs = np.nonzero(np.asarray(picture) > 24)
    if len(ys) == 0:
        picture, ys, xs = Image.fromarray(image), *np.nonzero(image > 24)
    picture = picture.crop((xs.min(), ys.min(), xs.max() + 1, ys.max() + 1))
    scale = box / max(picture.size)
    width, height = max(1, round(picture.width * scale)), max(1, round(picture.height * scale))
    small = np.asarray(picture.resize((width, height), Image.Resampling.LANCZOS), dtype=np.float32) / 255
    canvas = np.zeros((SIZE, SIZE), dtype=np.float32)
    mass = small.sum() or 1.0
    cy, cx = (small.sum(1) @ np.arange(height)) / mass, (small.sum(0) @ np.arange(width)) / mass
    top = int(np.clip(round(SIZE / 2 - cy), 0, SIZE - height))
    left = int(np.clip(round(SIZE / 2 - cx), 0, SIZE - width))
    canvas[top : top + height, left : left + width] = small
    return torch.from_numpy(canvas.clip(0, 1))


def font_digit(font_file: str, digit: int, rng: np.random.Generator) -> np.ndarray:
    """The digit drawn in white on black with ``font_file`` at 64 px, on a canvas with room to spare."""
    font = ImageFont.truetype(font_file, 64)
    canvas = Image.new("L", (112, 112))
    ImageDraw.Draw(canvas).text((24, 8), str(digit), fill=int(rng.integers(200, 256)), font=font)
    return np.asarray(canvas)


def sklearn_digit(image: np.ndarray) -> np.ndarray:
    """One of scikit-learn's 8x8 digits (0-16) as a 64x64 grey image, bicubically upsampled."""
    small = Image.fromarray(np.round(image * 255 / 16).astype(np.uint8))
    return np.asarray(small.resize((64, 64), Image.Resampling.BICUBIC))


def affine(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random rotation (+-10 degrees), slant (shear +-0.25), scale (0.9-1.1) and shift (+-2 px) per image."""
    n = images.shape[0]

    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(n, generator=generator)

    angle, shear, scale = uniform(-10, 10) * math.pi / 180, uniform(-0.25, 0.25), uniform(0.9, 1.1)
    shift = uniform(-2, 2), uniform(-2, 2)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = cos, -sin + shear * cos
    theta[:, 1, 0], theta[:, 1, 1] = sin, cos + shear * sin
    theta[:, 0, 2], theta[:, 1, 2] = 2 * shift[0] / SIZE, 2 * shift[1] / SIZE
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def elastic(images: torch.Tensor, generator: torch.Generator, alpha: float = 12.0, sigma: float = 4.0) -> torch.Tensor:
    """Simard et al.'s elastic distortion: uniform(-1, 1) displacements smoothed by a Gaussian of ``sigma`` px and
    scaled by ``alpha`` px, one field per image."""
    n = images.shape[0]
    radius = int(3 * sigma)
    taps = torch.exp(-(torch.arange(-radius, radius + 1, dtype=torch.float32) ** 2) / (2 * sigma**2))
    taps = taps / taps.sum()
    field = torch.rand(n * 2, 1, SIZE, SIZE, generator=generator) * 2 - 1
    field = F.conv2d(F.pad(field, (radius, radius, 0, 0), mode="reflect"), taps.view(1, 1, 1, -1))
    field = F.conv2d(F.pad(field, (0, 0, radius, radius), mode="reflect"), taps.view(1, 1, -1, 1))
    field = field.view(n, 2, SIZE, SIZE).permute(0, 2, 3, 1) * alpha * 2 / SIZE  # pixels -> [-1, 1] units
    base = F.affine_grid(torch.eye(2, 3).expand(n, 2, 3), [n, 1, SIZE, SIZE], align_corners=False)
    return F.grid_sample(images, base + field, mode="bilinear", padding_mode="zeros", align_corners=False)


def clutter(images: torch.Tensor, fragments: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Stray strokes (15 %), a fragment of another digit entering from a border (10 %), blotches (10 %), uneven
    ink (intensity 0.7-1 per image) and pixel noise (sigma up to 0.04)."""
    n = images.shape[0]
    out = images * (0.7 + 0.3 * torch.rand(n, 1, 1, 1, generator=generator))
    coordinates = torch.arange(SIZE, dtype=torch.float32)
    ys, xs = torch.meshgrid(coordinates, coordinates, indexing="ij")
    for i in range(n):
        draw = torch.rand(4, generator=generator)
        if draw[0] < 0.15:  # a stray stroke: a short thick line segment somewhere
            (y0, x0), angle = torch.rand(2, generator=generator) * SIZE, torch.rand(1, generator=generator) * math.pi
            length = 3 + 6 * torch.rand(1, generator=generator)
            dy, dx = torch.sin(angle), torch.cos(angle)
            along = ((ys - y0) * dy + (xs - x0) * dx).clamp(0, float(length))
            distance = torch.hypot(ys - y0 - along * dy, xs - x0 - along * dx)
            out[i, 0] = torch.maximum(out[i, 0], (0.8 * (1.2 - distance).clamp(0, 1)))
        if draw[1] < 0.1:  # another digit's edge entering from a side
            other = fragments[int(torch.randint(len(fragments), (1,), generator=generator))]
            side = int(torch.randint(4, (1,), generator=generator))
            shifted = torch.roll(other, shifts=(0, 20) if side < 2 else (20, 0), dims=(-2, -1))
            edge = torch.zeros_like(shifted)
            if side == 0:
                edge[..., :, :5] = 1
            elif side == 1:
                edge[..., :, -5:] = 1
            elif side == 2:
                edge[..., :5, :] = 1
            else:
                edge[..., -5:, :] = 1
            out[i] = torch.maximum(out[i], 0.7 * shifted * edge)
        if draw[2] < 0.1:  # a blotch
            cy, cx = torch.rand(2, generator=generator) * SIZE
            radius = 1 + 1.5 * torch.rand(1, generator=generator)
            out[i, 0] = torch.maximum(out[i, 0], 0.6 * (radius - torch.hypot(ys - cy, xs - cx)).clamp(0, 1))
    noise = torch.randn(out.shape, generator=generator) * 0.04 * torch.rand(n, 1, 1, 1, generator=generator)
    return (out + noise).clamp(0, 1)


def make_split(sources: list[tuple[int, np.ndarray]], per_class: int, out: Path, seed: int) -> None:
    """Write ``per_class`` distorted images per digit, drawing their sources at random from ``sources``."""
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    by_class = {digit: [image for label, image in sources if label == digit] for digit in range(10)}
    labels = np.repeat(np.arange(10), per_class)
    strokes = rng.choice([-1, 0, 0, 1, 2], size=len(labels))
    boxes = rng.integers(BOX - 4, BOX + 3, size=len(labels))
    images = torch.stack(
        [
            fit_box(by_class[label][rng.integers(len(by_class[label]))], int(box), int(stroke))
            for label, box, stroke in zip(labels, boxes, strokes, strict=True)
        ]
    ).unsqueeze(1)
    images = elastic(affine(images, generator), generator)
    images = clutter(images, images[torch.randperm(len(images), generator=generator)], generator)
    pixels = (images * 255).round().to(torch.uint8)
    counts = dict.fromkeys(range(10), 0)
    for label, image in zip(labels, pixels, strict=True):
        folder = out / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image[0].numpy(), mode="L").save(folder / f"{label}_{counts[label]:04d}.png")
        counts[label] += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--train-per-class", type=int, default=700)
    parser.add_argument("--test-per-class", type=int, default=160)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    digits = load_digits()
    train_idx, test_idx = train_test_split(
        np.arange(len(digits.images)), test_size=0.2, stratify=digits.target, random_state=args.seed
    )
    fonts = installed_fonts()
    test_fonts = fonts[FONT_TEST_SHARE - 1 :: FONT_TEST_SHARE]
    train_fonts = [font for font in fonts if font not in test_fonts]
    rng = np.random.default_rng(args.seed)

    def sources(indices: np.ndarray, font_files: list[str]) -> list[tuple[int, np.ndarray]]:
        written = [(int(digits.target[i]), sklearn_digit(digits.images[i])) for i in indices]
        drawn = [(d, font_digit(font, d, rng)) for font in font_files for d in range(10)]
        repeat = max(1, len(written) // max(1, len(drawn)))  # as many font as scikit-learn source images
        return written + drawn * repeat

    make_split(sources(train_idx, train_fonts), args.train_per_class, args.out / "train", 2 * args.seed + 1)
    make_split(sources(test_idx, test_fonts), args.test_per_class, args.out / "val", 2 * args.seed + 2)
    print(
        f"wrote {args.out}/train ({args.train_per_class}/class, {len(train_fonts)} fonts) and {args.out}/val "
        f"({args.test_per_class}/class, {len(test_fonts)} other fonts)"
    )


if __name__ == "__main__":
    main()
