"""Does the input pipeline keep a GPU busy? `vitkit train` on a JPEG folder, three ways, for ViT-S/16 and ViT-B/16.

- memory: the folder decoded once into memory at the training size (--cache on): no file is read or decoded
  during training, the whole-batch augmentation runs on the GPU. The ceiling of the input path.
- cpu: per-sample decoding and augmentation in --workers CPU processes (--decode cpu --cache off).
- gpu: workers read the files' bytes, the GPU decodes each batch (torchvision decode_jpeg, nvJPEG) and augments it
  (--decode gpu --cache off).

The folder holds synthetic photos (smooth colour fields with noise, 500x375 like an average ImageNet JPEG, quality
90); the files' contents do not matter to the speed, so a few distinct images are written many times. Each run
trains --epochs epochs in bf16 and reports the last epoch's training images/s (steps only, data waits included).
The bar: the gpu path of ViT-S/16 at 90 % or more of its memory path. Prints a table with the ratios and writes
benchmarks/results/gpu_input.json. Meant for a GPU machine with 16 CPU cores:

    python benchmarks/gpu_input.py [--images 20000] [--workers 16] [--models vit_small_patch16_224 vit_base_patch16_224]

A CPU smoke run of the script itself: --device cpu --images 64 --image-size 32 --batch-size 16 --workers 2
--models vit_tiny_patch16_224.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vitkit.io import write_json
from vitkit.training import TrainConfig, train

RESULTS = Path(__file__).with_name("results") / "gpu_input.json"
PATHS = {
    "memory": {"cache": "on", "decode": "cpu"},
    "cpu": {"cache": "off", "decode": "cpu"},
    "gpu": {"cache": "off", "decode": "gpu"},
}
DISTINCT = 50  # distinct JPEGs; each is written images / DISTINCT times per split


def photo(seed: int, size: tuple[int, int] = (375, 500)) -> bytes:
    """A synthetic photo's JPEG bytes: smooth colour gradients plus noise, compressed like a camera's output."""
    rng = np.random.default_rng(seed)
    height, width = size
    y, x = np.mgrid[0:height, 0:width] / max(size)
    channels = [np.sin(8 * x * rng.uniform(0.3, 2) + rng.uniform(0, 6)) * np.cos(7 * y * rng.uniform(0.3, 2))
                for _ in range(3)]  # fmt: skip
    pixels = 127.5 + 100 * np.stack(channels, -1) + rng.normal(0, 10, (height, width, 3))
    out = Path(tempfile.mkstemp(suffix=".jpg")[1])
    Image.fromarray(pixels.clip(0, 255).astype(np.uint8), "RGB").save(out, quality=90)
    data = out.read_bytes()
    out.unlink()
    return data


def write_folder(root: Path, images: int, val_images: int, classes: int = 10) -> None:
    """root/train/<class>/ and root/val/<class>/ of JPEG files."""
    files = [photo(seed) for seed in range(DISTINCT)]
    for split, count in (("train", images), ("val", val_images)):
        for i in range(count):
            folder = root / split / f"class{i % classes}"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{i:07d}.jpg").write_bytes(files[i % DISTINCT])


def images_per_second(folder: Path, model: str, path: str, args: argparse.Namespace, out: Path) -> float:
    config = TrainConfig(
        data_dir=str(folder), model=model, image_size=args.image_size, batch_size=args.batch_size, epochs=args.epochs,
        warmup_epochs=0, workers=args.workers, device=args.device, amp="bf16" if args.device != "cpu" else "off",
        deterministic=False, ema_decay=0, progress=False, tensorboard=False, out=str(out), **PATHS[path],
    )  # fmt: skip
    return train(config).history[-1]["images_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=20_000, help="training images (default: 20000)")
    parser.add_argument("--val-images", type=int, default=500)
    parser.add_argument("--models", nargs="+", default=["vit_small_patch16_224", "vit_base_patch16_224"])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=2, help="the last epoch is measured (default: 2)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--paths", nargs="+", default=list(PATHS), choices=list(PATHS))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    rows: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "jpegs"
        started = time.perf_counter()
        write_folder(folder, args.images, args.val_images)
        print(f"wrote {args.images} + {args.val_images} JPEGs in {time.perf_counter() - started:.0f} s", flush=True)
        for model in args.models:
            rows[model] = {}
            for path in args.paths:
                rate = images_per_second(folder, model, path, args, Path(tmp) / f"{model}-{path}")
                rows[model][path] = rate
                print(f"{model:<24} {path:<6} {rate:9,.0f} images/s", flush=True)
    print(f"\n{'model':<24} " + " ".join(f"{p:>10}" for p in args.paths) + "   ratios to memory")
    for model, rates in rows.items():
        ratios = "  ".join(
            f"{p} {rates[p] / rates['memory']:.2f}" for p in args.paths if p != "memory" and "memory" in rates
        )
        print(f"{model:<24} " + " ".join(f"{rates[p]:10,.0f}" for p in args.paths) + f"   {ratios}")
    write_json(
        {
            "what": "vitkit train images/s (last epoch, bf16) on a JPEG folder: decoded in memory once (memory), per "
            "sample in CPU workers (cpu), per batch on the GPU (gpu)",
            "device": device_name,
            "cpu_count": os.cpu_count(),
            "workers": args.workers,
            "images": args.images,
            "image_size": args.image_size,
            "batch_size": args.batch_size,
            "epochs": args.epochs,
            "images_per_s": rows,
            "ratio_to_memory": {
                m: {p: r[p] / r["memory"] for p in r if p != "memory"} for m, r in rows.items() if "memory" in r
            },
        },
        RESULTS,
    )
    print(json.dumps({"results": str(RESULTS)}))


if __name__ == "__main__":
    main()
