"""The `vitkit` command: one module per subcommand, each with ``register(commands)`` and ``run(args)``.

The only package that prints. Library errors (bad input, missing files, unreadable images, a diverged
run) become one `vitkit: error: ...` line on stderr and a non-zero exit code, not a traceback.
Subcommand modules import torch and the library inside ``run``, so `vitkit --help` starts fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import pickle
import sys
from collections.abc import Sequence
from typing import NoReturn

from vitkit import __version__
from vitkit.cli.common import EXIT_FAILED, EXIT_USAGE, report_error

# Subcommands in the order `vitkit --help` lists them; each is the module vitkit.cli.<name>.
COMMANDS = (
    "train", "pretrain", "evaluate", "fewshot", "predict", "explain", "serve", "models", "bench", "convert", "export",
    "shard",
)  # fmt: skip


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage mistake reported on one line (the full usage of `train` is a page long)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    """The `vitkit` argument parser with its subcommands."""
    parser = _Parser(
        prog="vitkit",
        description="Train, evaluate and use Vision Transformers.",
        epilog="Run `vitkit COMMAND --help` for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"vitkit {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="log warnings and errors only")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"vitkit.cli.{name}").register(commands)
    return parser


def _is_main_process() -> bool:
    """Under torchrun (or srun) only rank 0 reports progress; the other processes log warnings and errors only."""
    if "RANK" in os.environ:
        return int(os.environ["RANK"]) == 0
    return "SLURM_STEP_NUM_TASKS" not in os.environ or int(os.environ.get("SLURM_PROCID", "0")) == 0


# PyTorch's own switch (read once, at its first allocation): CPU tensors of 2 MiB or more are asked to sit on
# transparent huge pages where the kernel allows them, so a fresh batch or activation costs ~19 page faults per
# 38 MiB instead of ~9,400 (a 64 x 3 x 224 x 224 float batch normalises ~3x faster). A value the user set wins.
HUGE_PAGES_ENV = "THP_MEM_ALLOC_ENABLE"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `vitkit` console script and of `python -m vitkit`; returns the exit code."""
    os.environ.setdefault(HUGE_PAGES_ENV, "1")  # before any subcommand imports torch; torchrun's children inherit it
    parser = build_parser()
    args = parser.parse_args(argv)
    quiet = args.quiet or not _is_main_process()
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(message)s")
    try:
        return args.func(args)
    except BrokenPipeError:
        # The reader went away (`vitkit predict ... | head`): stop quietly, as Unix tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED
    except ChildProcessError as err:  # a torchrun child failed: a run that failed, not a bad input
        message, code = str(err), EXIT_FAILED
    except pickle.UnpicklingError as err:  # a peer library's weights-only loader refused a checkpoint
        from vitkit.io import refusal_reason

        message = f"refused to load a checkpoint that is not plain tensors and values: {refusal_reason(err)}"
        code = EXIT_USAGE
    except (ValueError, OSError) as err:  # ImageLoadError is a ValueError, FileNotFoundError an OSError
        message, code = str(err), EXIT_USAGE
    except KeyboardInterrupt as err:  # TrainingInterrupted says where the checkpoint is and how to resume
        message, code = str(err) or "interrupted", 130
    except RuntimeError as err:
        from vitkit.training import NonFiniteLossError  # already imported by the run that raised it
        from vitkit.training.interrupts import DataWorkerError

        if not isinstance(err, (NonFiniteLossError, DataWorkerError)):
            raise
        message, code = str(err), EXIT_FAILED  # a diverged run, a data worker that died
    report_error(message)
    return code
