"""A folder and the same folder written as WebDataset shards train to the same accuracy (within seed noise).

Writes the 28x28 digits folder of make_digits_folder.py, shards it with `vitkit shard`, then trains the same
recipe on both, once per seed, both read per sample (the folder with --cache off, the shards streamed): only the
data path differs (files in a sampler's order against shards in the stream's order). The recipe is the 28x28 one
of docs/commands/train.md (vit_pico_patch7_28 at 28 px, no flips or crops, light affine). Prints each run's final
validation accuracy (EMA weights) on the folder's test/ images and the means; writes
benchmarks/results/shards_accuracy.json.

    python benchmarks/shards_accuracy.py [--seeds 0 1 2] [--epochs 20] [--train-per-class 200] [--shared]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from vitkit.data.shards import write_shards
from vitkit.io import write_json
from vitkit.training import TrainConfig, train

RESULTS = Path(__file__).with_name("results") / "shards_accuracy.json"


MODEL = "vit_pico_patch7_28"
AUGMENT = {"hflip": 0.0, "crop_scale_min": 1.0, "affine_degrees": 10.0, "affine_translate": 0.1, "affine_scale": 0.1}


def final_accuracy(data_dir: Path, seed: int, args: argparse.Namespace, out: Path) -> tuple[float, float]:
    """(final validation accuracy of the saved weights, seconds) of one run."""
    config = TrainConfig(
        data_dir=str(data_dir), seed=seed, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        warmup_epochs=args.warmup_epochs, model=MODEL, image_size=(28, 28), augment=AUGMENT, cache="off",
        workers=args.workers, auto_recipe=False, out=str(out), progress=False, tensorboard=False,
    )  # fmt: skip
    started = time.perf_counter()
    record = train(config).final
    accuracy = record["ema_val_acc"] if record.get("ema_val_acc") is not None else record["val_acc"]
    return accuracy, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--train-per-class", type=int, default=200)
    parser.add_argument("--test-per-class", type=int, default=50)
    parser.add_argument("--shard-size", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2, help="data-loading processes of each run")
    parser.add_argument("--warmup-epochs", type=float, default=3.0)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--shared", action="store_true", help="say in the results that the machine was shared")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder, shards = Path(tmp) / "digits", Path(tmp) / "shards"
        maker = Path(__file__).with_name("make_digits_folder.py")
        sizes = ["--train-per-class", str(args.train_per_class), "--test-per-class", str(args.test_per_class)]
        subprocess.run([sys.executable, str(maker), str(folder), *sizes], check=True, stdout=subprocess.DEVNULL)
        write_shards(folder, shards, args.shard_size)
        for seed in args.seeds:
            folder_acc, folder_s = final_accuracy(folder, seed, args, Path(tmp) / f"folder{seed}")
            shards_acc, shards_s = final_accuracy(shards, seed, args, Path(tmp) / f"shards{seed}")
            rows.append({"seed": seed, "folder_acc": folder_acc, "shards_acc": shards_acc, "folder_s": folder_s,
                         "shards_s": shards_s})  # fmt: skip
            print(f"seed {seed}: folder {100 * folder_acc:.2f}%  shards {100 * shards_acc:.2f}%  "
                  f"({folder_s:.0f} s / {shards_s:.0f} s)", flush=True)  # fmt: skip
    folder_accs, shard_accs = [r["folder_acc"] for r in rows], [r["shards_acc"] for r in rows]
    summary = {
        "what": "final validation accuracy, 28x28 digits folder (make_digits_folder.py) against its shards, "
        "same recipe and seeds, both read per sample",
        "train_per_class": args.train_per_class, "test_per_class": args.test_per_class, "epochs": args.epochs,
        "batch_size": args.batch_size, "workers": args.workers, "warmup_epochs": args.warmup_epochs, "lr": args.lr,
        "model": MODEL, "augment": AUGMENT, "shard_size": args.shard_size, "runs": rows,
        "folder_mean": statistics.mean(folder_accs), "shards_mean": statistics.mean(shard_accs),
        "folder_spread": max(folder_accs) - min(folder_accs), "shards_spread": max(shard_accs) - min(shard_accs),
        "machine": f"{torch.get_num_threads()} CPU threads" + (", shared with other jobs" if args.shared else ""),
    }  # fmt: skip
    print(json.dumps({k: v for k, v in summary.items() if k != "runs"}, indent=1))
    write_json(summary, RESULTS)


if __name__ == "__main__":
    main()
