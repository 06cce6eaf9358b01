"""GELU recomputation in a CPU training step: saved-tensor hooks against selective activation checkpointing.

Three ways to run a ViT's training step (forward, cross-entropy, backward, AdamW), float32 on the CPU:

- ``plain``: autograd keeps every GELU output for the following linear layer's weight gradient;
- ``hooks``: vitkit's saved-tensor hooks keep GELU's input instead and recompute the output in the backward pass
  (:mod:`vitkit.training.cpu_kernels`);
- ``selective checkpoint``: PyTorch's public mechanism, each MLP run in ``torch.utils.checkpoint.checkpoint`` with a
  ``create_selective_checkpoint_contexts`` policy that recomputes GELU and saves every other operator's output.

Step times are medians over interleaved rounds in one process (ratios against ``plain``); peak memory is each
variant's peak resident memory in a fresh process over two steps (the second holds AdamW's state), above what it
held after building the model. Writes ``benchmarks/results/gelu_recompute.json``.

    python benchmarks/gelu_recompute.py [--model vit_small_patch16_224] [--batch-size 32] [--rounds 5]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import nn
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

import vitkit
from vitkit.bench.memory import _reset_peak, memory_kib, unpooled_malloc
from vitkit.bench.peers import training_step
from vitkit.bench.timing import interleaved_seconds
from vitkit.model.vit import MLP
from vitkit.training.cpu_kernels import recompute_gelu_outputs

RESULTS = Path(__file__).parent / "results" / "gelu_recompute.json"


def _recompute_gelu_only(ctx: object, func: object, *args: object, **kwargs: object) -> CheckpointPolicy:
    return CheckpointPolicy.PREFER_RECOMPUTE if func is torch.ops.aten.gelu.default else CheckpointPolicy.MUST_SAVE


@contextlib.contextmanager
def selective_checkpoint(model: nn.Module) -> Iterator[None]:
    """Each MLP's forward in a selective checkpoint that recomputes its GELU only (the model's class untouched)."""
    mlps = [module for module in model.modules() if isinstance(module, MLP)]
    context_fn = functools.partial(create_selective_checkpoint_contexts, _recompute_gelu_only)
    for mlp in mlps:
        mlp.forward = functools.partial(checkpoint, mlp.forward, use_reentrant=False, context_fn=context_fn)
    try:
        yield
    finally:
        for mlp in mlps:
            del mlp.forward


VARIANTS: dict[str, Callable[[nn.Module], contextlib.AbstractContextManager]] = {
    "plain": lambda model: contextlib.nullcontext(),
    "hooks": lambda model: recompute_gelu_outputs(),
    "selective checkpoint": selective_checkpoint,
}


def _step(variant: str, model_name: str, batch_size: int) -> Callable[[], None]:
    torch.manual_seed(0)
    model = vitkit.VisionTransformer(vitkit.get_config(model_name)).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    images = torch.randn(batch_size, 3, 224, 224)
    return training_step(model, optimizer, images, forward_context=lambda m, x: VARIANTS[variant](model))


def _peak_mib(variant: str, model_name: str, batch_size: int, threads: int) -> float:
    """The peak resident memory of two training steps above what building left, in MiB (run in a fresh process)."""
    unpooled_malloc()
    torch.set_num_threads(threads)
    step = _step(variant, model_name, batch_size)
    _reset_peak()
    before, _ = memory_kib()
    step()
    step()
    return (memory_kib()[1] - before) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vit_small_patch16_224")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--peak-of", choices=list(VARIANTS), help=argparse.SUPPRESS)  # the fresh process's part
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.peak_of:
        print(_peak_mib(args.peak_of, args.model, args.batch_size, args.threads))
        return
    options = ["--model", args.model, "--batch-size", str(args.batch_size), "--threads", str(args.threads)]
    peaks = {
        variant: float(
            subprocess.run([sys.executable, __file__, *options, "--peak-of", variant], capture_output=True, text=True,
                           check=True).stdout.split()[-1]
        )
        for variant in VARIANTS
    }  # fmt: skip
    steps = {variant: _step(variant, args.model, args.batch_size) for variant in VARIANTS}
    seconds = interleaved_seconds(steps, rounds=args.rounds, repeats=1, inference=False)
    result = {
        "model": args.model, "batch_size": args.batch_size, "threads": args.threads,
        "peak_memory_mib": {variant: round(peak) for variant, peak in peaks.items()},
        "step_seconds": {variant: round(s, 4) for variant, s in seconds.items()},
        "speed_vs_plain": {variant: round(seconds["plain"] / s, 3) for variant, s in seconds.items()},
    }  # fmt: skip
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
