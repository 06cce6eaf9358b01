"""The comparisons of `vitkit bench`: inference of every model on the same batches, and a training step."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from torch import nn

from vitkit.bench.memory import peak_memories_mib
from vitkit.bench.peers import TRAINERS, build, training_step
from vitkit.bench.report import Comparison, Row, with_peer_ratios
from vitkit.bench.timing import flops_per_image, interleaved_seconds, matmul_calls, matmul_peak_gflops
from vitkit.model import get_config

logger = logging.getLogger(__name__)


def _row(label: str, images_per_s: float, flops_per_image: float, peak_gflops: float, memory_mib: float | None) -> Row:
    """A row whose GFLOP/s and share of the matmul peak follow from its images/s; no ratio yet."""
    gflops = flops_per_image * images_per_s / 1e9
    return Row(
        label=label,
        images_per_s=images_per_s,
        gflops_per_s=gflops,
        share_of_matmul_peak=gflops / peak_gflops,
        peak_memory_mib=memory_mib,
    )


def compare_inference(
    name: str,
    image_size: int,
    batch_sizes: list[int],
    labels: list[str],
    rounds: int,
    memory: bool,
    models: dict[str, nn.Module] | None = None,
) -> list[Comparison]:
    """Images/s, ratio to the fastest fp32 peer, GFLOP/s, share of the matmul peak, peak memory."""
    threads = torch.get_num_threads()
    if models is None:
        models = {label: model for label in labels if (model := build(label, name, image_size)) is not None}
    flops = flops_per_image(name, image_size)
    memories = peak_memories_mib(list(models), name, image_size, batch_sizes, threads) if memory else {}
    comparisons = []
    for i, batch_size in enumerate(batch_sizes):
        torch.manual_seed(0)
        images = torch.randn(batch_size, 3, image_size, image_size)
        calls: dict[str, Callable[[], Any]] = {label: partial(model, images) for label, model in models.items()}
        products, product_flops = matmul_calls()
        calls.update(products)
        repeats = max(1, 2 // batch_size)  # a batch of 1 twice per timing: calls of 0.05 s and up
        seconds = interleaved_seconds(calls, rounds, repeats)
        peak = matmul_peak_gflops(seconds, products, product_flops)
        comparison = Comparison(name, image_size, batch_size, "inference", threads, peak)
        for label, s in seconds.items():
            comparison.rows.append(_row(label, batch_size / s, flops, peak, memories[label][i] if memory else None))
        comparisons.append(with_peer_ratios(comparison))
        logger.info("%s at %d, batch %d: done", name, image_size, batch_size)
    return comparisons


def compare_training(name: str, batch_size: int, rounds: int, memory: bool) -> Comparison:
    """One training step (forward, backward, AdamW) of vitkit and timm on the same batch, each with AdamW as its
    library's training code builds it (:data:`~vitkit.bench.peers.TRAINERS`)."""
    threads = torch.get_num_threads()
    image_size = get_config(name).image_size[0]
    torch.manual_seed(0)
    images = torch.randn(batch_size, 3, image_size, image_size)
    steps = {}
    for label, recipe in TRAINERS.items():
        model = build(recipe.model, name, image_size)
        if model is not None:
            steps[label] = training_step(
                model.train(), recipe.optimizer(model), images, forward_context=recipe.forward_context
            )
    seconds = interleaved_seconds(steps, rounds, 1, inference=False)  # the warm-up call creates AdamW's state
    flops = 3 * flops_per_image(name, image_size)  # backward costs about twice the forward
    products, product_flops = matmul_calls()
    peak = matmul_peak_gflops(interleaved_seconds(products, rounds, 3), products, product_flops)
    comparison = Comparison(name, image_size, batch_size, "training", threads, peak)
    timm_speed = batch_size / seconds["timm"] if "timm" in seconds else None
    memories = peak_memories_mib(list(seconds), name, image_size, [batch_size], threads, train=True) if memory else {}
    for label, median in seconds.items():
        row = _row(label, batch_size / median, flops, peak, memories[label][0] if memory else None)
        comparison.rows.append(
            dataclasses.replace(row, ratio_to_fastest_peer=row.images_per_s / timm_speed if timm_speed else None)
        )
    return comparison
