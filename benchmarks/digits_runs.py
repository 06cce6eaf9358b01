"""What the few-label benchmarks (lora_transfer.py, mae_few_labels.py) share: the digits written as image folders
by split, the final accuracy of a run, and their command line (seeds, threads)."""

from __future__ import annotations

import argparse
import platform
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

CACHE_HELP = "keep the pre-training runs here and reuse those of the same seed and settings (default: none kept)"


def digits_split(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 digits as uint8 pixels (0..16 scaled to 0..255), their labels, and the indices of the
    80 % training and 20 % held-out images (stratified by the seed)."""
    digits = load_digits()
    pixels = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)
    train_idx, test_idx = train_test_split(
        np.arange(len(pixels)), test_size=0.2, stratify=digits.target, random_state=seed
    )
    return pixels, digits.target, train_idx, test_idx


def write_images(pixels: np.ndarray, labels: np.ndarray, indices: np.ndarray, root: Path) -> None:
    """Image ``i`` of ``indices`` as ``root / label / f"{i}.png"`` (a split of an image folder)."""
    for i in indices:
        folder = root / str(int(labels[i]))
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels[i], "L").save(folder / f"{i}.png")


def final_accuracy(history: list[dict]) -> float:
    """The held-out accuracy of a run's final model (the EMA's when the run kept one)."""
    last = history[-1]
    return last["ema_val_acc"] if last.get("ema_val_acc") is not None else last["val_acc"]


def parse_arguments(doc: str, cache: bool = False) -> argparse.Namespace:
    """--seeds and --threads (torch's thread count is set here); with ``cache``, --cache DIR."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=1)
    if cache:
        parser.add_argument("--cache", type=Path, metavar="DIR", help=CACHE_HELP)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    return args


def machine(threads: int) -> dict[str, object]:
    """The CPU's model name (from /proc/cpuinfo on Linux), the threads used, and that the machine was shared."""
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.is_file() else []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return {"cpu": names[0] if names else platform.machine(), "threads": threads, "note": "shared with other jobs"}
