"""Started by test_distributed.py as torchrun's worker on each of two simulated nodes (`--max-restarts 1`): it runs
`vitkit train ARGS...` as the command line does, except that on the first attempt the process of rank 1 stops after
optimizer step PAUSE_STEP, writes its process id to PID_FILE (the moment for the test to `kill -9` it) and waits.

    python -m torch.distributed.run ... elastic_worker.py PID_FILE PAUSE_STEP ARGS...
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

from vitkit import cli, training


def main(pid_file: str, pause_step: str, *args: str) -> int:
    train = training.train
    first_attempt = os.environ["TORCHELASTIC_RESTART_COUNT"] == "0"

    def pause(epoch: int, step: int, model: object) -> None:
        if first_attempt and os.environ["RANK"] == "1" and step == int(pause_step):
            ready = Path(pid_file).with_suffix(".tmp")
            ready.write_text(str(os.getpid()))
            ready.replace(pid_file)  # whole, or not there
            threading.Event().wait()  # until killed

    training.train = lambda config, **kwargs: train(config, on_step_end=pause, **kwargs)
    return cli.main(["-q", "train", *args])


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
