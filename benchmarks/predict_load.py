"""`vitkit predict` and `vitkit evaluate` over a large folder of small images: images/s and peak memory (RSS).

Writes COUNT tiny PNGs (grey noise, 10 class folders) into a temporary folder, saves a small random-weight model
beside them, then runs each command as its own process on a tenth of the folder and on all of it: a memory that
stays flat (streamed results) shows as the same peak RSS for both sizes. Peak RSS and CPU time are the child
process's own (os.wait4); images/s is the folder size over the wall time and, steadier on a shared machine, over the
CPU time (both include start-up: compare the two sizes for the per-image cost).

    python benchmarks/predict_load.py [--count 50000] [--size 16]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

import vitkit


def write_folder(root: Path, count: int, size: int) -> Path:
    rng = np.random.default_rng(0)
    for i in range(count):
        folder = root / f"class_{i % 10}"
        if i < 10:
            folder.mkdir(parents=True)
        Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8), "L").save(folder / f"{i:06d}.png")
    return root


def run_measured(command: list[str]) -> tuple[float, float, float]:
    """(wall seconds, CPU seconds, peak RSS in MiB) of one child process; its output is discarded."""
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "2"})
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise subprocess.CalledProcessError(process.returncode, command)
    return seconds, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024  # Linux reports KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=50_000, help="images in the large folder (default: 50000)")
    parser.add_argument("--size", type=int, default=16, help="image side in pixels (default: 16)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        started = time.perf_counter()
        sizes = {"small": args.count // 10, "large": args.count}
        folders = {name: write_folder(tmp_path / name, count, args.size) for name, count in sizes.items()}
        print(f"wrote {sum(sizes.values()):,} {args.size}x{args.size} PNGs in {time.perf_counter() - started:.0f} s")
        model = vitkit.VisionTransformer(
            image_size=args.size, patch_size=4, in_channels=1, num_classes=10, hidden_dim=64, depth=4, num_heads=4,
            mlp_dim=128, class_names=[f"class_{i}" for i in range(10)], mean=(0.5,), std=(0.25,),
        )  # fmt: skip
        run_dir = model.save_pretrained(tmp_path / "run")
        cli = [sys.executable, "-m", "vitkit", "-q"]
        commands = {
            "predict": lambda folder: [*cli, "predict", str(run_dir), str(folder), "--batch-size", "256"],
            "evaluate": lambda folder: [*cli, "evaluate", str(run_dir), "--data-dir", str(folder), "--json",
                                        "--batch-size", "256", "--plot", str(tmp_path / "cm.png")],
        }  # fmt: skip
        print(f"{'command':<9} {'images':>8} {'wall s':>7} {'images/s':>9} {'CPU s':>7} {'images/CPU s':>13} "
              f"{'peak RSS':>10}")  # fmt: skip
        for name, command in commands.items():
            for size_name, folder in folders.items():
                seconds, cpu, peak = run_measured(command(folder))
                count = sizes[size_name]
                print(f"{name:<9} {count:>8,} {seconds:>7.1f} {count / seconds:>9,.0f} {cpu:>7.1f} "
                      f"{count / cpu:>13,.0f} {peak:>6.0f} MiB", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
