"""Write a small photo-like image folder (ImageFolder layout): one object per image on a cluttered background.

No photo data set can be downloaded here, so this draws a stand-in whose answer has a place in the image: each
image holds one filled shape (the class: disc, square, triangle, cross, ring or bar), in a colour drawn around
the class's hue, at a random place and size, rotated, over a smooth random colour background with a few
distracting blobs of other hues. A model must find the object to classify it, so a faithful map points there.

    python benchmarks/make_shapes_folder.py OUT_DIR [--size 64] [--per-class 120] [--seed 0]
"""

from __future__ import annotations

import argparse
import colorsys
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

CLASSES = ("disc", "square", "triangle", "cross", "ring", "bar")


def _colour(rng: np.random.Generator, hue: float) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(hue % 1.0, rng.uniform(0.6, 1.0), rng.uniform(0.6, 1.0))
    return int(255 * r), int(255 * g), int(255 * b)


def _background(rng: np.random.Generator, size: int) -> Image.Image:
    """Smooth colour noise (a coarse random grid, upsampled and blurred), as out-of-focus scenery."""
    coarse = rng.uniform(40, 200, size=(4, 4, 3)).astype(np.uint8)
    image = Image.fromarray(coarse, "RGB").resize((size, size), Image.Resampling.BICUBIC)
    noise = rng.normal(0, 8, size=(size, size, 3))
    return Image.fromarray(np.clip(np.asarray(image, dtype=np.float64) + noise, 0, 255).astype(np.uint8), "RGB")


def _polygon(kind: str, centre: tuple[float, float], radius: float, angle: float) -> list[list[tuple[float, float]]]:
    """The shape's outline(s) as polygons (a ring is drawn as a disc with its middle refilled later)."""
    cx, cy = centre

    def turned(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
        c, s = math.cos(angle), math.sin(angle)
        return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in points]

    r = radius
    if kind == "square":
        return [turned([(-r, -r), (r, -r), (r, r), (-r, r)])]
    if kind == "triangle":
        return [turned([(r * math.cos(a), r * math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)])]
    if kind == "cross":
        w = r / 3
        return [turned([(-r, -w), (r, -w), (r, w), (-r, w)]), turned([(-w, -r), (w, -r), (w, r), (-w, r)])]
    if kind == "bar":
        return [turned([(-r, -r / 4), (r, -r / 4), (r, r / 4), (-r, r / 4)])]
    return [turned([(r * math.cos(a), r * math.sin(a)) for a in np.linspace(0, 2 * math.pi, 24, endpoint=False)])]


def draw(rng: np.random.Generator, label: int, size: int) -> Image.Image:
    image = _background(rng, size)
    pen = ImageDraw.Draw(image)
    for _ in range(rng.integers(1, 4)):  # distractors: soft blobs of any hue
        x, y, r = rng.uniform(0, size, 2).tolist() + [rng.uniform(size / 16, size / 8)]
        pen.ellipse((x - r, y - r, x + r, y + r), fill=_colour(rng, rng.uniform()))
    image = image.filter(ImageFilter.GaussianBlur(1.5))
    pen = ImageDraw.Draw(image)
    kind = CLASSES[label]
    radius = rng.uniform(size / 8, size / 5)
    centre = tuple(rng.uniform(radius, size - radius, 2).tolist())
    colour = _colour(rng, label / len(CLASSES) + rng.normal(0, 0.04))
    for outline in _polygon(kind, centre, radius, rng.uniform(0, math.pi)):
        pen.polygon(outline, fill=colour)
    if kind == "ring":
        inner = _polygon("disc", centre, radius * 0.55, 0.0)[0]
        pen.polygon(inner, fill=tuple(int(v) for v in np.asarray(image)[int(centre[1]), int(centre[0]) - 1] // 2))
    return image


def write_folder(out: Path, size: int, per_class: int, seed: int) -> None:
    """``per_class`` images of each class under OUT/<class>/ (the run holds some out for validation)."""
    rng = np.random.default_rng(seed)
    for label, name in enumerate(CLASSES):
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            draw(rng, label, size).save(folder / f"{name}_{i:04d}.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--size", type=int, default=64, help="image side in pixels (default: 64)")
    parser.add_argument("--per-class", type=int, default=120, help="images per class (default: 120)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    write_folder(args.out, args.size, args.per_class, args.seed)
    print(f"wrote {args.per_class * len(CLASSES)} images of {len(CLASSES)} classes to {args.out}")


if __name__ == "__main__":
    main()
