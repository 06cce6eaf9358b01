"""Timing side by side: every entry once per round, round after round, and the work each call does.

Noise on a shared machine then hits all entries alike; a figure is the median over rounds. GFLOP/s use the
architecture's multiply-adds (counted by torch's FlopCounterMode, 2 FLOPs each) and a float32 matrix-multiply peak
timed in the same rounds: the faster of PyTorch's two CPU products, MKL's through ``a @ b`` and oneDNN's.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from vitkit.model import VisionTransformer, get_config
from vitkit.optimize.onednn import linear, onednn_available

MATMUL_SHAPE = (3152, 768, 3072)  # ViT-B/16's MLP at batch 16: (16 * 197 tokens, width) @ (width, mlp)


def flops_per_image(name: str, image_size: int) -> float:
    """FLOPs of one image through the plain model (2 per multiply-add), counted by torch, not by hand."""
    from torch.utils.flop_counter import FlopCounterMode

    config = get_config(name, image_size=image_size)
    with torch.device("meta"):
        model = VisionTransformer(config)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, config.in_channels, *config.image_size, device="meta"))
    return float(counter.get_total_flops())


def _timed(fn: Callable[[], Any], repeats: int, synchronize: Callable[[], Any] | None = None) -> float:
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    if synchronize is not None:
        synchronize()
    return (time.perf_counter() - start) / repeats


def interleaved_seconds(
    calls: dict[str, Callable[[], Any]],
    rounds: int,
    repeats: int,
    warmup: int = 1,
    inference: bool = True,
    synchronize: Callable[[], Any] | None = None,
) -> dict[str, float]:
    """Median seconds per call of each entry, timed round by round (each round runs every entry once), in
    inference mode unless ``inference`` is False (training steps). ``synchronize`` (e.g. ``torch.cuda.synchronize``)
    waits for work that a call only queued, after the warm-up and after each timing's repeats.

    Each round starts one entry further down the list, so that no entry always runs first or always follows the
    same one (what an entry leaves in the caches and the allocator is then shared out among all of them).
    """
    labels = list(calls)
    with torch.inference_mode(inference):
        for fn in calls.values():
            for _ in range(warmup):
                fn()
        if synchronize is not None:
            synchronize()
        seconds: dict[str, list[float]] = {label: [] for label in calls}
        for round_index in range(rounds):
            start = round_index % len(labels)
            for label in labels[start:] + labels[:start]:
                seconds[label].append(_timed(calls[label], repeats, synchronize))
    return {label: statistics.median(values) for label, values in seconds.items()}


def matmul_calls() -> tuple[dict[str, Callable[[], Tensor]], float]:
    """The float32 products whose faster one sets the matmul peak, and their FLOPs: ``a @ b`` (MKL on the CPU)
    and, where PyTorch has it, oneDNN's, which ``optimize`` multiplies with (on AMD CPUs the faster of the two)."""
    m, k, n = MATMUL_SHAPE
    a, b = torch.randn(m, k), torch.randn(k, n)
    calls: dict[str, Callable[[], Tensor]] = {"matmul peak": lambda: a @ b}
    if onednn_available():
        weight = b.t().contiguous()  # (out, in), as a linear layer holds it
        calls["matmul peak, oneDNN"] = lambda: linear(a, weight)  # no gradient follows: oneDNN's product alone
    return calls, 2.0 * m * k * n


def matmul_peak_gflops(seconds: dict[str, float], products: dict[str, Callable[[], Tensor]], flops: float) -> float:
    """The matmul peak from the timed ``seconds`` (each product's entry removed from them)."""
    return flops / min(seconds.pop(label) for label in products) / 1e9
