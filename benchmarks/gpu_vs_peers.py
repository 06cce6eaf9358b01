"""The side-by-side benchmark on a GPU: vitkit beside timm, transformers, torchvision and vit-pytorch.

The CPU benchmark's method (one process, the same inputs, models interleaved round by round, the median
over rounds) with the GPU's own settings:

- fp32: plain float32 (TF32 off, PyTorch's default for matrix products);
- bf16 autocast: ``torch.autocast("cuda", torch.bfloat16)`` around the same models; attention runs through
  ``scaled_dot_product_attention`` where the library uses it, which picks flash attention for bf16. The row
  "vitkit, math attention" is vitkit with the flash and memory-efficient kernels turned off, to show their share;
- bf16 weights: ``vitkit.optimize(model, bf16=True)`` (fused q/k/v; on a GPU no Token Merging by default), and
  with Token Merging, beside each peer cast with ``.to(torch.bfloat16)``;
- compiled: ``vitkit.optimize(model, exact=True, compile=True)`` beside ``torch.compile`` of timm under bf16
  autocast, at the largest batch (``--compile-models``);
- a training step (forward, backward, fused AdamW) of vitkit (its forward as `vitkit train` runs it) and timm, fp32
  and bf16 autocast (``--train-models``).

Peak memory is ``torch.cuda.max_memory_allocated`` during one call of the model alone, above what was allocated
before it, plus the model's own weights; for a training step, with the model alone on the GPU, above what was
allocated before it was built (weights, gradients, AdamW state and activations). The GFLOP/s column counts the
plain model's FLOPs (torch's FlopCounterMode), whatever an optimization skips. Writes a Markdown table and JSON:

    python benchmarks/gpu_vs_peers.py [--device cuda] [--json gpu.json] [--markdown gpu.md]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

import vitkit
from vitkit import bench
from vitkit.optimize import default_tome

RESULTS = Path(__file__).parent / "results"
NAMES = {"vit_small_patch16_224": "ViT-S/16", "vit_base_patch16_224": "ViT-B/16", "vit_tiny_patch16_224": "ViT-Ti/16"}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_mib(fn: Callable[[], Any], model: nn.Module, device: torch.device) -> float | None:
    """GPU memory that one call needs above what was allocated before it, plus the model's weights, in MiB."""
    if device.type != "cuda":
        return None
    synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    synchronize(device)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    return (torch.cuda.max_memory_allocated(device) - before + weights) / 2**20


def peers(name: str, image_size: int, device: torch.device) -> dict[str, nn.Module]:
    """The plain vitkit model and each installed peer at the same size, on ``device``, in eval mode."""
    return {label: model.to(device) for label in ("vitkit", *bench.FP32_PEERS)
            if (model := bench.build(label, name, image_size)) is not None}  # fmt: skip


class MathAttention(nn.Module):
    """``model`` with scaled_dot_product_attention's flash and memory-efficient kernels turned off."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> Tensor:
        with sdpa_kernel(SDPBackend.MATH):
            return self.model(images)


class BF16Input(nn.Module):
    """A peer cast to bf16 takes bf16 images (vitkit's bf16 model casts them itself)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model.to(torch.bfloat16)

    def forward(self, images: Tensor) -> Tensor:
        return self.model(images.to(torch.bfloat16))


def compare(
    name: str,
    image_size: int,
    batch_size: int,
    kind: str,
    models: dict[str, nn.Module],
    device: torch.device,
    rounds: int,
    dtype: torch.dtype | None = None,
) -> bench.Comparison:
    """Images/s of each model on the same batch (under autocast to ``dtype``, if given), ratio to the fastest peer."""
    torch.manual_seed(0)
    images = torch.randn(batch_size, 3, image_size, image_size, device=device)
    calls = {label: (lambda m=model: m(images)) for label, model in models.items()}
    flops = bench.flops_per_image(name, image_size)
    with torch.inference_mode(), torch.autocast(device.type, dtype, enabled=dtype is not None):
        memory = {label: peak_memory_mib(fn, models[label], device) for label, fn in calls.items()}
        seconds = bench.interleaved_seconds(
            calls, rounds, repeats=max(1, 16 // batch_size), warmup=2, synchronize=lambda: synchronize(device)
        )
    comparison = bench.Comparison(name, image_size, batch_size, kind, torch.get_num_threads(), None)
    for label, s in seconds.items():
        speed = batch_size / s
        row = bench.Row(label, speed, gflops_per_s=flops * speed / 1e9, peak_memory_mib=memory[label])
        comparison.rows.append(row)
    return bench.with_peer_ratios(comparison)


def fused_adamw_step(label: str, model: nn.Module, images: Tensor, dtype: torch.dtype | None) -> Callable[[], None]:
    """A training step of ``model`` with fused AdamW (the same update for every library on a GPU), vitkit's
    forward as `vitkit train` runs it (``bench.vitkit_training_forward``)."""
    optimizer = torch.optim.AdamW(model.parameters(), fused=True)
    context = bench.vitkit_training_forward if label == "vitkit" else bench.no_context
    return bench.training_step(model, optimizer, images, dtype, forward_context=context)


def training_peak_mib(
    label: str, name: str, images: Tensor, device: torch.device, dtype: torch.dtype | None
) -> float | None:
    """GPU memory of a training step with this model alone on the GPU, in MiB: its weights, gradients, AdamW
    state and activations at their peak (the third step: from the second on, the state and the last gradients
    exist). Measured above what was allocated before the model was built, not above the step's start: what a
    library keeps between steps counts too."""
    if device.type != "cuda":
        return None
    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated(device)
    model = bench.build(label, name, images.shape[-1]).to(device).train()
    step = fused_adamw_step(label, model, images, dtype)
    step()
    step()
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    step()
    synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - before) / 2**20


def compare_training(
    name: str, image_size: int, batch_size: int, device: torch.device, rounds: int, dtype: torch.dtype | None
) -> bench.Comparison:
    """One training step (forward, backward, fused AdamW) of vitkit and timm; ratio to timm."""
    torch.manual_seed(0)
    images = torch.randn(batch_size, 3, image_size, image_size, device=device)
    models = {label: model.to(device).train() for label in ("vitkit", "timm")
              if (model := bench.build(label, name, image_size)) is not None}  # fmt: skip
    steps = {label: fused_adamw_step(label, model, images, dtype) for label, model in models.items()}
    seconds = bench.interleaved_seconds(
        steps, rounds, repeats=1, warmup=2, inference=False, synchronize=lambda: synchronize(device)
    )  # the warm-up steps create AdamW's state
    del models, steps  # then memory, each model alone, once the kernels' one-time workspaces exist
    memory = {label: training_peak_mib(label, name, images, device, dtype) for label in seconds}
    flops = 3 * bench.flops_per_image(name, image_size)  # backward costs about twice the forward
    kind = f"training, {'bf16 autocast' if dtype else 'fp32'}"
    comparison = bench.Comparison(name, image_size, batch_size, kind, torch.get_num_threads(), None)
    timm_speed = batch_size / seconds["timm"] if "timm" in seconds else None
    for label, s in seconds.items():
        speed = batch_size / s
        ratio = speed / timm_speed if timm_speed else None
        row = bench.Row(label, speed, ratio, gflops_per_s=flops * speed / 1e9, peak_memory_mib=memory[label])
        comparison.rows.append(row)
    return comparison


def run(
    names: list[str], image_size: int, batch_sizes: list[int], device: torch.device, rounds: int,
    compiled_names: list[str], trained_names: list[str], train_batch_size: int,
    report: Callable[[bench.Comparison], None],
) -> None:  # fmt: skip
    """Every comparison in turn, each handed to ``report`` as soon as it is measured."""
    bf16 = torch.bfloat16
    for name in names:
        models = peers(name, image_size, device)
        plain = models["vitkit"]
        fused = vitkit.optimize(plain, exact=True)
        for batch_size in batch_sizes:
            report(compare(name, image_size, batch_size, "fp32", {"vitkit exact": fused, **models}, device, rounds))
            autocast_models = {"vitkit": plain, "vitkit, math attention": MathAttention(plain), **models}
            report(compare(name, image_size, batch_size, "bf16 autocast", autocast_models, device, rounds, bf16))
        tome = default_tome(plain.config)
        bf16_models = {"vitkit bf16": vitkit.optimize(plain, bf16=True),
                       f"vitkit bf16, ToMe r={tome}": vitkit.optimize(plain, bf16=True, tome=tome)}  # fmt: skip
        bf16_models.update({label: BF16Input(model) for label, model in models.items() if label != "vitkit"})
        for batch_size in batch_sizes:
            report(compare(name, image_size, batch_size, "bf16 weights", bf16_models, device, rounds))
        del bf16_models, models, plain, fused
        if name in compiled_names:
            vitkit_model, timm_model = (bench.build(label, name, image_size).to(device) for label in ("vitkit", "timm"))
            compiled = {"vitkit exact": vitkit.optimize(vitkit_model, exact=True, compile=True),
                        "timm": torch.compile(timm_model)}  # fmt: skip
            report(
                compare(
                    name, image_size, max(batch_sizes), "bf16 autocast, torch.compile", compiled, device, rounds, bf16
                )
            )
            del compiled
        if name in trained_names:
            for dtype in (None, bf16):
                report(compare_training(name, image_size, train_batch_size, device, rounds, dtype))
        if device.type == "cuda":
            torch.cuda.empty_cache()


def markdown(results: dict) -> str:
    """One line per library and comparison."""
    columns = ["model", "batch", "precision", "library", "images/s", "vs fastest peer (training: vs timm)", "TFLOP/s",
               "peak MiB"]  # fmt: skip
    lines = [results["machine"], "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for c in results["comparisons"]:
        for row in c["rows"]:
            ratio = "-" if row["ratio_to_fastest_peer"] is None else f"{row['ratio_to_fastest_peer']:.2f}x"
            memory = "-" if row["peak_memory_mib"] is None else f"{row['peak_memory_mib']:.0f}"
            tflops = row["gflops_per_s"] / 1000
            lines.append(f"| {NAMES.get(c['model'], c['model'])} | {c['batch_size']} | {c['kind']} | {row['label']} "
                         f"| {row['images_per_s']:.1f} | {ratio} | {tflops:.1f} | {memory} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def machine(device: torch.device) -> str:
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    return f"{where}, torch {torch.__version__}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--models", nargs="+", default=["vit_small_patch16_224", "vit_base_patch16_224"])
    parser.add_argument("--image-size", type=int, default=224, help="the models' image size (default: 224)")
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 256])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--compile-models", nargs="*", default=["vit_base_patch16_224"], help="also compiled")
    parser.add_argument("--train-models", nargs="*", default=["vit_base_patch16_224"], help="also a training step")
    parser.add_argument("--train-batch-size", type=int, default=128)
    parser.add_argument("--json", type=Path, default=RESULTS / "gpu.json")
    parser.add_argument("--markdown", type=Path, default=RESULTS / "gpu.md")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU here: this benchmark is for a GPU machine (--device cpu to try it on the CPU)")
    results: dict[str, Any] = {"machine": machine(device), "comparisons": []}

    def report(comparison: bench.Comparison) -> None:
        results["comparisons"].append(comparison.to_dict())
        args.json.write_text(json.dumps(results, indent=1))
        args.markdown.write_text(markdown(results), encoding="utf-8")
        print(markdown({"machine": results["machine"], "comparisons": [comparison.to_dict()]}), flush=True)

    run(args.models, args.image_size, args.batch_sizes, device, args.rounds, args.compile_models, args.train_models,
        args.train_batch_size, report)  # fmt: skip


if __name__ == "__main__":
    main()
