"""Image folders: start-up of `vitkit train` beside a torchvision ImageFolder script, and training-input images/s
beside timm's loader. Writes benchmarks/results/data.json.

Start-up: the wall time (and the CPU time of the process and its workers, steadier on a shared machine) of `vitkit train
--data-dir DIR --steps 1` (a small model, 224 px, the same workers) with an empty folder index, once with the folder's
files evicted from the page cache (the first start on a folder not read for a while or just mounted) and once with them
read into it (a folder just written or copied), and with the index of the first start (a second start, resume or
evaluate; the median of SECOND_STARTS), against a script that scans the same folder with torchvision's `ImageFolder` and
loads one batch through a `DataLoader` with the same workers. Each is its own process, run in turns; the script's time
is the median of its runs (its first run on the evicted folder).

Training input: `vitkit.bench.data_loading.compare_training_input` (what `vitkit bench --data-dir` prints):
random resized crop + flip + normalise at 224, vitkit's decoder against timm's `create_transform(224,
is_training=True)` in a `DataLoader` with the same workers, batch size and sample order, rounds interleaved.

The folders hold photo-like JPEGs written here (smooth gradients, shapes and noise, 300-500 px, quality 90,
45-90 KB): ``--distinct`` different pictures, copied under new names up to each ``--counts`` size.

    python benchmarks/data_loading.py [--counts 20000 100000] [--workers 2] [--root /tmp/vitkit-data]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

import vitkit
from vitkit.cli import HUGE_PAGES_ENV
from vitkit.cli.bench import _cpu_name as cpu_name

os.environ.setdefault(HUGE_PAGES_ENV, "1")  # the `vitkit` command's setting, made before torch's first allocation
from vitkit.bench.data_loading import compare_training_input  # noqa: E402
from vitkit.io import write_json  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "data.json"
CLASSES = 10
SMALL_MODEL = ["--model", "vit_tiny_patch16_224", "--patch-size", "32", "--depth", "2", "--hidden-dim", "64",
               "--num-heads", "2", "--mlp-dim", "128"]  # fmt: skip
BATCH = 64
SECOND_STARTS = 3  # second starts measured (the median counts), each after a run of the script

IMAGEFOLDER_SCRIPT = """
import sys, torch
from torch.utils.data import DataLoader
from torchvision import datasets, transforms
normalize = transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
transform = transforms.Compose([transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip(),
                                transforms.ToTensor(), normalize])
folder = datasets.ImageFolder(sys.argv[1], transform=transform)
images, labels = next(iter(DataLoader(folder, batch_size=int(sys.argv[3]), shuffle=True, num_workers=int(sys.argv[2]))))
print(len(folder), tuple(images.shape))
"""


def photo(path: Path, rng: np.random.Generator) -> None:
    """A photo-like picture: gradients, a ripple, a few filled shapes, a slight blur and sensor-like noise."""
    width, height = rng.integers(300, 501, 2)
    y = np.linspace(0, 1, height)[:, None, None]
    x = np.linspace(0, 1, width)[None, :, None]
    a, b, base = rng.uniform(-120, 120, 3), rng.uniform(-120, 120, 3), rng.uniform(60, 200, 3)
    pixels = base + a * x + b * y + 30 * np.sin(rng.uniform(2, 9) * x + rng.uniform(2, 9) * y + rng.uniform(0, 6, 3))
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(rng.integers(3, 8)):
        left, top, side = rng.integers(0, width), rng.integers(0, height), rng.integers(20, 160)
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape([left, top, left + side, top + side * rng.uniform(0.5, 1.5)], fill=colour)
    noisy = np.asarray(image.filter(ImageFilter.GaussianBlur(1.2))).astype(np.int16)
    noisy += rng.normal(0, 15, noisy.shape).astype(np.int16)
    Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(path, quality=90)


def write_folder(root: Path, count: int, distinct: list[Path]) -> Path:
    """root/train/<class>/ holding ``count`` files, copies of the distinct pictures under new names."""
    if root.is_dir() and sum(1 for _ in root.glob("train/*/*.jpg")) == count:
        return root
    for c in range(CLASSES):
        (root / "train" / f"c{c}").mkdir(parents=True, exist_ok=True)
    for i in range(count):
        shutil.copyfile(distinct[i % len(distinct)], root / "train" / f"c{i % CLASSES}" / f"{i:06d}.jpg")
    return root


def timed(command: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the process and of every process it started) of one command."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def evict(folder: Path) -> None:
    """Drop the folder's files from the page cache (``POSIX_FADV_DONTNEED``), as for a folder not read for a while
    or just mounted: the next reader pays the disk."""
    for path in folder.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def read_all(folder: Path) -> None:
    """Read every file of the folder once: the page cache then holds it, as for a folder just written or copied."""
    for path in folder.rglob("*"):
        if path.is_file():
            path.read_bytes()


def startup(data_dir: Path, workers: int, env: dict[str, str]) -> dict[str, float]:
    """Seconds to the first optimizer step: the ImageFolder script between vitkit's starts. A first start (an empty
    folder index) is timed twice: with the folder evicted from the page cache (``cold``; so is the script's first
    run) and with the folder read into it (``warm``)."""
    with tempfile.TemporaryDirectory() as tmp:

        def train(name: str, cache: str) -> tuple[float, float]:
            return timed([sys.executable, "-m", "vitkit", "-q", "train", "--data-dir", str(data_dir), "--steps", "1",
                          *SMALL_MODEL, "--image-size", "224", "--batch-size", str(BATCH), "--workers",
                          str(workers), "--cache", "off", "--no-progress", "--no-tensorboard", "--out",
                          str(Path(tmp) / name)], {**env, "VITKIT_CACHE_DIR": str(Path(tmp) / cache)})  # fmt: skip

        script = [sys.executable, "-c", IMAGEFOLDER_SCRIPT, str(data_dir / "train"), str(workers), str(BATCH)]
        evict(data_dir)
        baseline = [timed(script, env)]
        evict(data_dir)
        first = train("first", "cache")
        read_all(data_dir)
        baseline.append(timed(script, env))
        first_warm = train("first-warm", "another-cache")
        seconds = []
        for round in range(SECOND_STARTS):  # the script and second starts in turns
            baseline.append(timed(script, env))
            seconds.append(train(f"second{round}", "cache"))
        baseline.append(timed(script, env))
    second = (statistics.median(run[0] for run in seconds), statistics.median(run[1] for run in seconds))
    wall, cpu = statistics.median(run[0] for run in baseline), statistics.median(run[1] for run in baseline)
    return {"files": sum(1 for _ in data_dir.glob("train/*/*.jpg")), "imagefolder_script_s": wall,
            "imagefolder_script_cpu_s": cpu, "imagefolder_script_runs_s": [run[0] for run in baseline],
            "vitkit_first_start_s": first[0], "vitkit_first_start_cpu_s": first[1],
            "vitkit_first_start_warm_s": first_warm[0], "vitkit_first_start_warm_cpu_s": first_warm[1],
            "vitkit_second_start_s": second[0], "vitkit_second_start_cpu_s": second[1],
            "vitkit_second_start_runs_s": [run[0] for run in seconds],
            "first_start_ratio": first[0] / wall, "first_start_warm_ratio": first_warm[0] / wall,
            "second_start_ratio": second[0] / wall, "first_start_cpu_ratio": first[1] / cpu,
            "second_start_cpu_ratio": second[1] / cpu}  # fmt: skip


def _previous_startup() -> list[dict]:
    """The start-up rows of the results file, if any: a run for some folder sizes keeps the others'."""
    try:
        return json.loads(RESULTS.read_text())["startup"]
    except (OSError, ValueError, KeyError):
        return []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--counts", nargs="+", type=int, default=[20000, 100000], help="folder sizes")
    parser.add_argument("--distinct", type=int, default=2000, help="different pictures to write")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the training-input timing")
    parser.add_argument("--root", type=Path, default=Path(tempfile.gettempdir()) / "vitkit-data")
    parser.add_argument("--batches", type=int, default=16, help="timed batches of 64 per pipeline and round")
    parser.add_argument(
        "--no-startup",
        action="store_true",
        help="measure only the training input (the first count's folder); keep the start-up rows",
    )
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": str(Path(vitkit.__file__).parents[1])}
    distinct_dir = args.root / "distinct"
    distinct_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    distinct = sorted(distinct_dir.glob("*.jpg"))
    for i in range(len(distinct), args.distinct):
        photo(distinct_dir / f"{i:06d}.jpg", rng)
    distinct = sorted(distinct_dir.glob("*.jpg"))[: args.distinct]
    sizes = [path.stat().st_size for path in distinct]
    results: dict = {
        "machine": {
            "cpu": cpu_name(),
            "cpus": os.cpu_count(),
            "note": "a shared machine: other processes ran beside these measurements",
        },
        "files": {
            "distinct": len(distinct),
            "kib_min": min(sizes) / 1024,
            "kib_median": statistics.median(sizes) / 1024,
            "kib_max": max(sizes) / 1024,
        },
        "workers": args.workers,
        "startup": [],
    }
    previous = _previous_startup()
    for count in [] if args.no_startup else args.counts:
        folder = write_folder(args.root / f"photos-{count}", count, distinct)
        results["startup"].append({**startup(folder, args.workers, env), "load_average": os.getloadavg()[0]})
        print(results["startup"][-1], flush=True)
        write_json(results, RESULTS)
    kept = [row for row in previous if row["files"] not in args.counts]  # the sizes not measured this time
    results["startup"] = sorted(kept + results["startup"], key=lambda row: row["files"])
    folder = write_folder(args.root / f"photos-{args.counts[0]}", args.counts[0], distinct)
    measured = compare_training_input(folder, args.workers, batches=args.batches, rounds=args.rounds)
    results["training_input"] = {**measured, "load_average": os.getloadavg()[0]}
    for row in results["training_input"]["rows"]:
        print(f"{row['label']:24s} {row['images_per_s']:8.1f} images/s  {row['ratio_to_timm']:.2f}x timm")
    write_json(results, RESULTS)


if __name__ == "__main__":
    main()
