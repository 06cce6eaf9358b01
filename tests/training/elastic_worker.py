"""Started by test_distributed.py as torchrun's worker on each of two simulated nodes (`--max-restarts 1`): it runs
`vitkit train ARGS...` as the command line does, except that on the first attempt the process of rank 1 stops after
optimizer step PAUSE_STEP, prints `paused PID` (its process id: the moment for the test to `kill -9` it) on its
standard output, which torchrun passes through, and waits. The run draws no pictures or plots (the test compares
weights and metrics).

    python -m torch.distributed.run ... elastic_worker.py PAUSE_STEP ARGS...
"""

from __future__ import annotations

import os
import sys
import threading

from training_helpers import without_pictures

from vitkit import cli, training


def main(pause_step: str, *args: str) -> int:
    train = training.train
    first_attempt = os.environ["TORCHELASTIC_RESTART_COUNT"] == "0"
    without_pictures()

    def pause(epoch: int, step: int, model: object) -> None:
        if first_attempt and os.environ["RANK"] == "1" and step == int(pause_step):
            print(f"paused {os.getpid()}", flush=True)
            threading.Event().wait()  # until killed

    training.train = lambda config, **kwargs: train(config, on_step_end=pause, **kwargs)
    return cli.main(["-q", "train", *args])


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
