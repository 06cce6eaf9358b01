"""The training step on a GPU: `vitkit train`'s beside timm's, ViT-B/16 at 224 with bf16 autocast, eager and compiled.

Each library's step as its trainer builds it (``vitkit.bench.TRAINERS``): vitkit's model with fused AdamW and its
forward pass in the context ``cpu_kernels.choose`` gives, as `vitkit train` runs it; timm's model with
``create_optimizer_v2``'s AdamW.
"compiled" rows wrap the model in ``torch.compile`` (what `vitkit train --compile` does). The steps are timed
interleaved round by round in one process (median over rounds). For each row: images/s, TFLOP/s (three times the
forward FLOPs that torch's FlopCounterMode counts, the backward costing about twice the forward) and MFU, the TFLOP/s
over the device's dense bf16 peak (looked up from its name; none for an unknown device or the CPU).

    python benchmarks/gpu_train.py [--model vit_base_patch16_224] [--batch-size 128] [--rounds 5] [--json PATH]

On the CPU (``--device cpu``) the same code runs, for its arithmetic; its speeds mean nothing for a GPU.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from vitkit import bench
from vitkit.bench.peers import ForwardContext, TrainingRecipe

RESULTS = Path(__file__).parent / "results"
# Dense bf16 peaks in TFLOP/s from NVIDIA's data sheets (SXM boards; the PCIe H100 is slower). Longest name first.
PEAK_BF16_TFLOPS = {"H100 PCIe": 756.0, "H100": 989.0, "H200": 989.0, "A100": 312.0}


def peak_tflops(device_name: str) -> float | None:
    """The dense bf16 peak of a device named like ``torch.cuda.get_device_name()``, None if unknown."""
    for key in sorted(PEAK_BF16_TFLOPS, key=len, reverse=True):
        if key.lower() in device_name.lower():
            return PEAK_BF16_TFLOPS[key]
    return None


def training_flops_per_image(name: str, image_size: int) -> float:
    """FLOPs of one image's training step: the forward pass's (counted by torch) times three."""
    return 3 * bench.flops_per_image(name, image_size)


def row(label: str, seconds: float, batch_size: int, flops_per_image: float, peak: float | None) -> dict[str, Any]:
    """One step's figures: images/s, TFLOP/s and the share of the peak (MFU, None without a peak)."""
    images_per_s = batch_size / seconds
    tflops = images_per_s * flops_per_image / 1e12
    return {"label": label, "seconds_per_step": seconds, "images_per_s": images_per_s, "tflops": tflops,
            "mfu": tflops / peak if peak else None}  # fmt: skip


def model_context(recipe: TrainingRecipe, model: torch.nn.Module) -> ForwardContext:
    """The recipe's forward context, given the plain ``model`` whatever module the step calls (a compiled one)."""
    return lambda _, images: recipe.forward_context(model, images)


def steps(
    name: str, image_size: int, batch_size: int, device: torch.device, compile_backend: str | None
) -> dict[str, Any]:
    """label -> one training step (bf16 autocast) of each library, eager and, with a backend, compiled."""
    images = torch.randn(batch_size, 3, image_size, image_size, device=device)
    calls = {}
    for compiled in (False, True) if compile_backend else (False,):
        for library in ("vitkit", "timm"):
            recipe = bench.TRAINERS[library]
            model = bench.build(recipe.model, name, image_size).to(device).train()
            network = torch.compile(model, backend=compile_backend) if compiled else model
            context = model_context(recipe, model)
            step = bench.training_step(network, recipe.optimizer(model), images, torch.bfloat16, context)
            calls[f"{library}, compiled" if compiled else library] = step
    return calls


def run(
    name: str,
    image_size: int,
    batch_size: int,
    rounds: int,
    device: torch.device,
    compile_backend: str | None,
    repeats: int = 3,
    warmup: int = 3,
) -> dict[str, Any]:
    """Time every step interleaved and return the device, its peak and one row per step."""
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak = peak_tflops(device_name) if device.type == "cuda" else None
    flops = training_flops_per_image(name, image_size)
    synchronize = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else None
    seconds = bench.interleaved_seconds(steps(name, image_size, batch_size, device, compile_backend), rounds,
                                            repeats, warmup, inference=False, synchronize=synchronize)  # fmt: skip
    return {
        "model": name, "image_size": image_size, "batch_size": batch_size, "precision": "bf16 autocast",
        "device": device_name, "peak_bf16_tflops": peak, "training_flops_per_image": flops,
        "rows": [row(label, s, batch_size, flops, peak) for label, s in seconds.items()],
    }  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="vit_base_patch16_224")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3, help="steps per timing")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (compiled: the compilation)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--compile-backend", default="inductor", help="torch.compile backend; 'none': eager only")
    parser.add_argument("--json", type=Path, default=RESULTS / "gpu_train.json")
    args = parser.parse_args(argv)
    backend = None if args.compile_backend == "none" else args.compile_backend
    results = run(args.model, args.image_size, args.batch_size, args.rounds, torch.device(args.device), backend,
                  args.repeats, args.warmup)  # fmt: skip
    print(f"{results['model']} at {results['image_size']}, batch {results['batch_size']}, bf16 autocast, "
          f"{results['device']} (bf16 peak {results['peak_bf16_tflops'] or 'unknown'} TFLOP/s)")  # fmt: skip
    print(f"{'step':<18} {'images/s':>10} {'TFLOP/s':>9} {'MFU':>7}")
    for r in results["rows"]:
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "-"
        print(f"{r['label']:<18} {r['images_per_s']:>10.1f} {r['tflops']:>9.2f} {mfu:>7}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
