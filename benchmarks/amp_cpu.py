"""Is bf16 autocast faster than fp32 for training on this CPU? (`--amp auto` uses it on CUDA only.)

Times forward + backward + AdamW steps of a named model in both precisions, alternating rounds so that
machine noise hits both alike, and prints the median step times and their ratio (> 1: bf16 is faster).

    python benchmarks/amp_cpu.py [--model vit_digits] [--batch-size 64] [--rounds 5]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch
import torch.nn.functional as F

import vitkit


def time_steps(model: torch.nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor, labels: torch.Tensor,
               bf16: bool, steps: int) -> float:  # fmt: skip
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    start = time.perf_counter()
    for _ in range(steps):
        with autocast:
            loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vit_digits")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = vitkit.create_model(args.model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    images = torch.randn(args.batch_size, model.in_channels, *model.image_size)
    labels = torch.randint(0, model.num_classes, (args.batch_size,))
    times: dict[bool, list[float]] = {False: [], True: []}
    for bf16 in (False, True):
        time_steps(model, optimizer, images, labels, bf16, 1)  # warm-up
    for _ in range(args.rounds):
        for bf16 in (False, True):
            times[bf16].append(time_steps(model, optimizer, images, labels, bf16, args.steps))
    fp32, bf16 = statistics.median(times[False]), statistics.median(times[True])
    print(f"{args.model}, batch {args.batch_size}, {torch.get_num_threads()} threads")
    print(
        f"  fp32 {1000 * fp32:.1f} ms/step, bf16 autocast {1000 * bf16:.1f} ms/step, bf16 speed-up {fp32 / bf16:.2f}x"
    )


if __name__ == "__main__":
    main()
