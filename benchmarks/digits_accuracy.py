"""The main job's bar: `vitkit train` on the digits, timed as a user runs it, beside scikit-learn's SVC.

Runs the real command (`python -m vitkit train` with no training flags, a fresh process, so import time
counts) once per seed, reads the test accuracy from the run's metrics.jsonl, and fits an SVC on the
same stratified split in this process. Prints one line per run and the medians.

    python benchmarks/digits_accuracy.py [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.svm import SVC


def run_vitkit(seed: int, out: Path) -> tuple[float, float]:
    """Wall time of the whole command and the final test accuracy of the weights it saved."""
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "vitkit", "train", "--seed", str(seed), "--out", str(out), "--no-progress"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    seconds = time.perf_counter() - start
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    final_acc = last["ema_val_acc"] if last.get("ema_val_acc") is not None else last["val_acc"]
    return seconds, final_acc


def run_svc(seed: int) -> tuple[float, float]:
    digits = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(
        digits.data, digits.target, test_size=0.2, stratify=digits.target, random_state=seed
    )
    start = time.perf_counter()
    accuracy = SVC().fit(x_train, y_train).score(x_test, y_test)
    return time.perf_counter() - start, float(accuracy)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            vit_s, vit_acc = run_vitkit(seed, Path(tmp) / f"seed{seed}")
            svc_s, svc_acc = run_svc(seed)
            rows.append((vit_s, vit_acc, svc_acc))
            print(
                f"seed {seed}: vitkit {100 * vit_acc:.2f}% in {vit_s:.1f} s wall | SVC {100 * svc_acc:.2f}% "
                f"in {svc_s:.2f} s | accuracy difference {100 * (vit_acc - svc_acc):+.2f} points",
                flush=True,
            )
    vit_s, vit_acc, svc_acc = (statistics.median(column) for column in zip(*rows))
    print(f"median over {len(rows)} seed(s): vitkit {100 * vit_acc:.2f}% in {vit_s:.1f} s, SVC {100 * svc_acc:.2f}%")
    met = all(acc >= 0.989 and seconds <= 60 for seconds, acc, _ in rows)
    print(f"bar: >= 98.90% in <= 60 s on every seed -> {'met' if met else 'NOT met'}")


if __name__ == "__main__":
    main()
