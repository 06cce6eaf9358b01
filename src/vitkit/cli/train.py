"""`vitkit train`: train a model, one line per epoch; `--nproc N` starts N processes through torchrun."""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from vitkit.cli.common import int_at_least, percent


def register(commands: argparse._SubParsersAction) -> None:
    from vitkit.cli.train_flags import add_train_arguments  # no torch: flags come from the settings' dataclasses

    parser = commands.add_parser(
        "train",
        help="train a model (default: vit_digits_stem on the built-in digits data set)",
        description="Train a Vision Transformer. With no arguments: vit_digits_stem on scikit-learn's 8x8 digits.",
    )
    add_train_arguments(parser)
    parser.add_argument(
        "--nproc", type=int_at_least(1), default=1,
        help="processes to train with: starts torchrun with N processes (DistributedDataParallel) (default: 1)",
    )  # fmt: skip
    parser.set_defaults(func=run)


def format_epoch_line(record: dict[str, Any], epochs: int) -> str:
    """One line per epoch: loss, accuracies, learning rate, throughput."""
    ema = f"  ema val acc {100 * record['ema_val_acc']:6.2f}%" if record.get("ema_val_acc") is not None else ""
    return (
        f"epoch {record['epoch']:>{len(str(epochs))}}/{epochs}  loss {record['train_loss']:.4f}  "
        f"train acc {100 * record['train_acc']:6.2f}%  val acc {100 * record['val_acc']:6.2f}%{ema}  "
        f"lr {record['lr']:.2e}  {record['images_per_s']:,.0f} img/s  {record['epoch_time_s']:.1f}s"
    )


def launch(nproc: int, config_file: Path) -> None:
    """Run ``vitkit train --config FILE`` in ``nproc`` processes through torchrun and wait for them."""
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
        "-m", "vitkit", "train", "--config", str(config_file),
    ]  # fmt: skip
    print(f"starting {nproc} training processes: {' '.join(command)}", flush=True)
    returncode = subprocess.run(command, check=False).returncode
    if returncode != 0:
        raise ChildProcessError(
            f"distributed training with {nproc} processes failed (torchrun exit code {returncode}); "
            "the processes' own error messages are above"
        )


def run(args: argparse.Namespace) -> int:
    """Train a model, one line per epoch; with --nproc N > 1 start N copies of this command under torchrun."""
    from vitkit import training
    from vitkit.cli.train_flags import config_from_args
    from vitkit.io import write_json
    from vitkit.training import distributed
    from vitkit.training.config import TRAIN_CONFIG_FILE, check_batch_split

    config = config_from_args(args)
    ctx = distributed.context_from_env()
    if args.nproc > 1 and not ctx.distributed:
        check_batch_split(config.batch_size, args.nproc)
        config = training.prepare_config(config)  # one run folder for all the processes
        with tempfile.TemporaryDirectory() as tmp:
            config_file = Path(tmp) / TRAIN_CONFIG_FILE
            write_json(config.to_dict(), config_file)
            launch(args.nproc, config_file)
        print(f"run folder: {config.out}")  # rank 0 of the processes printed the epochs
        return 0
    result = training.train(
        config, on_epoch_end=lambda record: print(format_epoch_line(record, config.epochs), flush=True)
    )
    if not ctx.is_main:
        return 0
    best = result.best_val_acc
    print(f"run folder: {result.run_dir}" + (f"  (best val acc {percent(best)})" if best is not None else ""))
    return 0
