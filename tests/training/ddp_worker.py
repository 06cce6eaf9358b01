"""Started by the `ddp_out` fixture (conftest.py) under torchrun (2 processes); each rank writes its results to OUT_DIR.

    python -m torch.distributed.run --standalone --nproc_per_node=2 ddp_worker.py CONFIG UNEVEN_CONFIG OUT_DIR

The worker joins the process group itself, so the four runs share it (train() leaves a group it did not create).

1. a full DDP run of CONFIG (folder OUT_DIR/ddp): rank<R>.safetensors holds each rank's final raw weights;
2. the same run crashed mid-epoch on every rank, then resumed (OUT_DIR/resumed); rank 0 writes its files;
3. a run whose loss turns NaN on rank 1 only: rank<R>.json says how each rank stopped;
4. UNEVEN_CONFIG: one epoch on shards that do not divide evenly between the 2 processes (OUT_DIR/uneven).

In every run each rank's own CPU kernels decision would differ (as timing noise can make it); rank<R>.json also lists
the decisions each rank's forward passes ran in. The runs draw no pictures or plots (no test here looks at them).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from training_helpers import without_pictures

from vitkit.io import save_safetensors
from vitkit.training import NonFiniteLossError, TrainConfig, cpu_kernels, train
from vitkit.training.cpu_kernels import CpuKernels

CRASH_STEP = 15  # epoch 2 of 11-step epochs, right after the save_every=5 checkpoint


class Crash(Exception):
    pass


def main(config_file: str, uneven_config_file: str, out_dir: str) -> None:
    out = Path(out_dir)
    rank = int(os.environ["RANK"])
    dist.init_process_group("gloo")
    config = TrainConfig.from_file(config_file)
    without_pictures()

    # What the tiny model's runs would decide anyway (no oneDNN, GELU outputs kept), except on rank 1.
    own_decision = CpuKernels(onednn_products=rank == 1, recompute_gelu=False, reason=f"rank {rank}'s decision")
    cpu_kernels.choose = lambda *args: own_decision
    decisions_used: set[str] = set()
    forward = CpuKernels.forward

    def recorded_forward(kernels: CpuKernels) -> contextlib.AbstractContextManager[None]:
        decisions_used.add(kernels.reason)
        return forward(kernels)

    CpuKernels.forward = recorded_forward  # type: ignore[method-assign]

    models: list[torch.nn.Module] = []
    train(config, on_step_end=lambda epoch, step, model: models.append(model) if not models else None)
    save_safetensors(models[0].state_dict(), out / f"rank{rank}.safetensors")

    def crash(epoch: int, step: int, model: torch.nn.Module) -> None:
        if step == CRASH_STEP:
            raise Crash

    interrupted = config.replace(out=str(out / "resumed"), save_every=5)
    try:
        train(interrupted, on_step_end=crash)
    except Crash:
        train(interrupted.replace(resume=interrupted.out))

    def poison_rank_1(epoch: int, step: int, model: torch.nn.Module) -> None:
        if rank == 1 and step == 3:
            with torch.no_grad():
                model.head.weight.fill_(math.nan)

    outcome = {"error": None}
    try:
        train(config.replace(out=str(out / "nan"), epochs=1), on_step_end=poison_rank_1)
    except NonFiniteLossError as err:
        outcome = {"error": str(err), "epoch": err.epoch, "step": err.step}
    train(TrainConfig.from_file(uneven_config_file))
    outcome["cpu_kernels"] = sorted(decisions_used)
    (out / f"rank{rank}.json").write_text(json.dumps(outcome))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:])
