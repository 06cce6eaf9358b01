"""Started by test_distributed.py under torchrun (2 processes); each rank writes its results to OUT_DIR.

The worker joins the process group itself, so the three runs share it (train() leaves a group it did not create).

1. a full DDP run (folder OUT_DIR/ddp): rank<R>.safetensors holds each rank's final raw weights;
2. the same run crashed mid-epoch on every rank, then resumed (OUT_DIR/resumed); rank 0 writes its files;
3. a run whose loss turns NaN on rank 1 only: rank<R>.json says how each rank stopped.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from vitkit.io import save_safetensors
from vitkit.training import NonFiniteLossError, TrainConfig, train

CRASH_STEP = 15  # epoch 2 of 11-step epochs, right after the save_every=5 checkpoint


class Crash(Exception):
    pass


def main(config_file: str, out_dir: str) -> None:
    out = Path(out_dir)
    rank = int(os.environ["RANK"])
    dist.init_process_group("gloo")
    config = TrainConfig.from_file(config_file)

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
    (out / f"rank{rank}.json").write_text(json.dumps(outcome))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:])
