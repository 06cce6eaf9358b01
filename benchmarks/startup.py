"""How long each `vitkit` command takes before it can do anything: `COMMAND --help`, and the imports its work needs,
beside the floor every command that runs a model pays (importing torch and torchvision).

Each measurement is a fresh interpreter; rounds alternate between the cases so that a busy machine slows all alike,
and the medians are compared. Also lists which of the heavy libraries that no command needs at start
(scikit-learn, matplotlib, onnx, timm, transformers) each command's imports load.

    python benchmarks/startup.py [--rounds 3]      # writes benchmarks/results/startup.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

# What each command imports before its first output (its run() imports these first).
COMMAND_IMPORTS = {
    "train": "vitkit.training.run",
    "evaluate": "vitkit.evaluation",
    "predict": "vitkit.prediction",
    "explain": "vitkit.explain.report",
    "convert": "vitkit.interop",
    "export": "vitkit.interop.export",
}
FLOOR = "torch, torchvision"
HEAVY = ("sklearn", "matplotlib", "onnx", "timm", "transformers")


def seconds(argv: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, *argv], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def loaded_heavy(module: str) -> list[str]:
    code = f"import sys, {module}; print(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    return subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.split()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "startup.json")
    args = parser.parse_args()
    cases = {"floor": ["-c", f"import {FLOOR}"]}
    cases.update({f"{name} --help": ["-m", "vitkit", name, "--help"] for name in COMMAND_IMPORTS})
    cases.update({name: ["-c", f"import {module}"] for name, module in COMMAND_IMPORTS.items()})
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.rounds):
        for name, argv in cases.items():
            times[name].append(seconds(argv))
    floor = statistics.median(times["floor"])
    results = {
        name: {
            "median_s": round(statistics.median(values), 3),
            "ratio_to_torch_import": round(statistics.median(values) / floor, 2),
            **({"heavy_modules_loaded": loaded_heavy(COMMAND_IMPORTS[name])} if name in COMMAND_IMPORTS else {}),
        }
        for name, values in times.items()
    }
    report = {
        "machine": f"{platform.processor() or platform.machine()}, {platform.system()}; shared with other work",
        "rounds": args.rounds,
        "floor": f"import {FLOOR}",
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    for name, result in results.items():
        print(f"{name:<16} {result['median_s']:6.2f} s  {result['ratio_to_torch_import']:5.2f}x the torch import  "
              f"{' '.join(result.get('heavy_modules_loaded', []))}")  # fmt: skip


if __name__ == "__main__":
    main()
