"""The accuracy bar of `vitkit.optimize`: each option against float32 on a model trained for the digits.

Trains `vit_digits` with the real command (`python -m vitkit train`, or pass --run-dir to reuse a run),
rebuilds the run's held-out split as `vitkit evaluate` does, and reports for the plain float32 model and
each option: top-1 accuracy on the held-out split, the change in points, and the share of predictions that
agree with float32 on the held-out split and on all 1,797 digits. Also times each option on ViT-B/16 at
batch 16 beside plain vitkit, interleaved in one process (images/s, median of rounds).

    python benchmarks/optimize_accuracy.py [--epochs 60] [--run-dir runs/digits] [--rounds 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from sklearn.datasets import load_digits

import vitkit
from vitkit import bench, training
from vitkit.io import write_json

OPTIONS: dict[str, dict[str, Any]] = {
    "float32": {},
    "exact, MKL products": {"exact": True, "onednn": False},
    "exact (fused q/k/v, oneDNN)": {"exact": True},
    "fused + int8": {"tome": 0},
    "default": {},
    "int8, fbgemm kernels": {"int8_backend": "x86", "tome": 0},
    "int8 via torchao": {"int8_backend": "torchao", "tome": 0},
    "bf16": {"bf16": True, "tome": 0},
    "ToMe r=1": {"int8": False, "tome": 1},
    "ToMe r=2": {"int8": False, "tome": 2},
    "int8 + ToMe r=1": {"tome": 1},
    "ONNX Runtime fp32": {"onnxruntime": True, "int8": False},
    "ONNX Runtime int8": {"onnxruntime": True, "int8": True},
}
SPEED_OPTIONS = {
    label: OPTIONS[label]
    for label in (
        "float32",
        "exact, MKL products",
        "exact (fused q/k/v, oneDNN)",
        "fused + int8",
        "default",
        "int8, fbgemm kernels",
        "int8 via torchao",
        "bf16",
        "ONNX Runtime fp32",
        "ONNX Runtime int8",
    )  # fmt: skip
}
# ToMe on ViT-B/16 (196 patches, 12 blocks) at the digits runs' shares: r=4 merges a quarter of the patches
# (as r=1 on vit_digits and the default), r=8 half of them (as r=2).
SPEED_OPTIONS.update({
    "ToMe r=4": {"int8": False, "tome": 4},
    "ToMe r=8": {"int8": False, "tome": 8},
    "int8 + ToMe r=8": {"tome": 8},
    "bf16 + ToMe r=8": {"bf16": True, "tome": 8},
})  # fmt: skip
COMPILE_OPTIONS = {"exact + torch.compile": {"exact": True, "compile": True}}


def build(model: vitkit.VisionTransformer, label: str, options: dict[str, Any]) -> torch.nn.Module:
    if label == "float32":
        return model
    try:
        return vitkit.optimize(model, **options)
    except ImportError as err:
        print(f"{label}: skipped ({err})")
        return None


def predictions(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return torch.cat([model(batch).argmax(dim=1) for batch in images.split(256)])


def accuracy_table(run_dir: Path) -> list[dict[str, Any]]:
    model = vitkit.VisionTransformer.from_pretrained(run_dir).eval()
    bundle = training.build_run_data(
        training.load_train_config(run_dir), channels=model.in_channels, preprocessing=model.config
    )
    held_out = [bundle.val[i] for i in range(len(bundle.val))]
    images, labels = torch.stack([x for x, _ in held_out]), torch.tensor([int(y) for _, y in held_out])
    # All 1,797 digits as the run's evaluation transform sees them: 8-bit pixels, the run's mean and std.
    pixels = torch.tensor(load_digits().images * (255.0 / 16.0)).round().float()[:, None] / 255.0
    all_images = (pixels - bundle.mean[0]) / bundle.std[0]
    reference, reference_all = predictions(model, images), predictions(model, all_images)
    base = (reference == labels).float().mean().item()
    rows = []
    for label, options in OPTIONS.items():
        fast = build(model, label, options)
        if fast is None:
            continue
        held, every = predictions(fast, images), predictions(fast, all_images)
        accuracy = (held == labels).float().mean().item()
        rows.append({
            "option": label, "accuracy": accuracy, "points_vs_float32": 100 * (accuracy - base),
            "agreement_held_out": (held == reference).float().mean().item(),
            "agreement_all_digits": (every == reference_all).float().mean().item(),
        })  # fmt: skip
        print(f"{label:24s} accuracy {100 * accuracy:6.2f}%  ({rows[-1]['points_vs_float32']:+.2f} points)  "
              f"agreement {100 * rows[-1]['agreement_held_out']:6.2f}% held out, "
              f"{100 * rows[-1]['agreement_all_digits']:6.2f}% all digits", flush=True)  # fmt: skip
    return rows


def speed_table(
    rounds: int, compile: bool, name: str = "vit_base_patch16_224", batch_size: int = 16
) -> list[dict[str, Any]]:
    torch.manual_seed(0)
    model = vitkit.create_model(name).eval()
    options = {**SPEED_OPTIONS, **(COMPILE_OPTIONS if compile else {})}
    models = {label: m for label, option in options.items() if (m := build(model, label, option)) is not None}
    images = torch.randn(batch_size, 3, 224, 224)
    first_call = {}
    for label, m in models.items():  # the first call pays for torch.compile's compilation
        with torch.inference_mode():
            start = time.perf_counter()
            m(images)
            first_call[label] = time.perf_counter() - start
    seconds = bench.interleaved_seconds({k: (lambda m=m: m(images)) for k, m in models.items()}, rounds, 1)
    rows = []
    for label, s in seconds.items():
        speedup = seconds["float32"] / s
        rows.append(
            {"option": label, "images_per_s": batch_size / s, "speedup": speedup, "first_call_s": first_call[label]}
        )
        first = first_call[label]
        print(f"{label:24s} {batch_size / s:7.2f} images/s  {speedup:.2f}x float32  (first call {first:.1f} s)")
    return rows


def trained_accuracy(run_dir: Path | None, epochs: int) -> list[dict[str, Any]]:
    """The accuracy table on ``run_dir``, or on a digits run trained here with `vitkit train`."""
    with tempfile.TemporaryDirectory() as tmp:
        if run_dir is None:
            run_dir = Path(tmp) / "digits"
            command = [sys.executable, "-m", "vitkit", "-q", "train", "--epochs", str(epochs), "--out", str(run_dir),
                       "--no-progress", "--no-tensorboard"]  # fmt: skip
            subprocess.run(command, check=True)
        threads = torch.get_num_threads()
        print(f"accuracy on the held-out digits of {run_dir} (torch {torch.__version__}, {threads} threads)")
        return accuracy_table(run_dir)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", type=Path, help="a finished `vitkit train` run on the digits (else train one)")
    parser.add_argument("--epochs", type=int, default=60, help="epochs when training here (default: 60)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds for the speed table (0 skips it)")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (minutes of compiling)")
    parser.add_argument("--skip-accuracy", action="store_true", help="only the speed table")
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "optimize_accuracy.json")
    args = parser.parse_args()
    accuracy = [] if args.skip_accuracy else trained_accuracy(args.run_dir, args.epochs)
    speed = []
    if args.rounds:
        threads = torch.get_num_threads()
        print(f"\nspeed: vit_base_patch16_224, batch 16, {threads} threads, median of {args.rounds} rounds")
        speed = speed_table(args.rounds, args.compile)
    write_json({"accuracy": accuracy, "speed": speed}, args.json)
    print(f"results: {args.json}")


if __name__ == "__main__":
    main()
