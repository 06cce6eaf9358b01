"""Write a 28x28 handwritten-digit image folder (ImageFolder layout) from scikit-learn's digits.

No MNIST can be downloaded here, so this builds an MNIST-sized stand-in: each 8x8 digit is
upscaled to 28x28 and varied by random rotation, shift, zoom and shear. Training images come
only from the digits' 80% training split and test images only from the other 20%, so no test
digit is ever seen in training, not even as a variant.

    python benchmarks/make_digits_folder.py OUT_DIR [--train-per-class 800] [--test-per-class 200]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torchvision.transforms import v2


def write_split(images: torch.Tensor, labels: np.ndarray, per_class: int, out: Path, generator_seed: int) -> None:
    """Write ``per_class`` random variants per class, cycling through that class's source digits."""
    torch.manual_seed(generator_seed)
    vary = v2.Compose(
        [
            v2.Resize(20, interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
            v2.Pad(4),  # MNIST style: a 20x20 digit in a 28x28 box
            v2.RandomAffine(degrees=12, translate=(0.08, 0.08), scale=(0.85, 1.1), shear=8),
        ]
    )
    for label in range(10):
        folder = out / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        sources = images[labels == label]
        for i in range(per_class):
            variant = vary(sources[i % len(sources)])
            Image.fromarray(variant[0].numpy(), mode="L").save(folder / f"{label}_{i:04d}.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--train-per-class", type=int, default=800)
    parser.add_argument("--test-per-class", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    digits = load_digits()
    images = torch.tensor(np.round(digits.images * 255 / 16), dtype=torch.uint8).unsqueeze(1)
    train_idx, test_idx = train_test_split(
        np.arange(len(images)), test_size=0.2, stratify=digits.target, random_state=args.seed
    )
    write_split(images[train_idx], digits.target[train_idx], args.train_per_class, args.out / "train", args.seed)
    write_split(images[test_idx], digits.target[test_idx], args.test_per_class, args.out / "val", args.seed + 1)
    print(f"wrote {args.out}/train ({args.train_per_class}/class) and {args.out}/val ({args.test_per_class}/class)")


if __name__ == "__main__":
    main()
