"""AdamW parameter groups and the warm-up + cosine schedule."""

from __future__ import annotations

import math

import pytest
import torch

from vitkit.model import VisionTransformer
from vitkit.training.optim import build_optimizer, build_scheduler, lr_factor


def test_weight_decay_skips_norms_biases_position_and_cls() -> None:
    model = VisionTransformer(image_size=8, patch_size=2, in_channels=1, num_classes=10, hidden_dim=32, depth=2,
                              num_heads=2, mlp_dim=64)  # fmt: skip
    optimizer = build_optimizer(model, lr=1e-3, weight_decay=0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for g in optimizer.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    plain = {names[id(p)] for g in optimizer.param_groups if g["weight_decay"] == 0 for p in g["params"]}
    assert decayed | plain == set(names.values()) and not decayed & plain
    assert {
        "pos_embed",
        "cls_token",
        "norm.weight",
        "norm.bias",
        "blocks.0.norm1.weight",
        "blocks.0.attn.q.bias",
    } <= plain
    assert {"patch_embed.proj.weight", "blocks.0.attn.q.weight", "blocks.1.mlp.fc2.weight", "head.weight"} <= decayed


def test_schedule_warms_up_linearly_then_decays_by_cosine() -> None:
    total, warmup, min_ratio = 100, 10, 0.01
    factors = [lr_factor(s, total, warmup, min_ratio) for s in range(total)]
    assert factors[:warmup] == pytest.approx([(s + 1) / warmup for s in range(warmup)])
    assert factors[warmup] == pytest.approx(1.0)
    assert factors[-1] == pytest.approx(min_ratio)
    assert all(a >= b for a, b in zip(factors[warmup:-1], factors[warmup + 1 :], strict=True))
    middle = warmup + (total - warmup - 1) // 2
    assert factors[middle] == pytest.approx(min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * 0.5)), abs=0.02)


def test_scheduler_steps_once_per_optimizer_step() -> None:
    param = torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.AdamW([param], lr=0.1)
    scheduler = build_scheduler(optimizer, total_steps=20, warmup_steps=4, min_ratio=0.0)
    seen = []
    for _ in range(20):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert seen[0] == pytest.approx(0.025) and seen[3] == pytest.approx(0.1)
    assert seen[-1] == pytest.approx(0.0, abs=1e-12)
