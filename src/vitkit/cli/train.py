"""`vitkit train`: train a model, one line per epoch; `--nproc N` starts N processes through torchrun, and with
`--nnodes` / `--rdzv-endpoint` on each of several machines, joins them into one run (:mod:`vitkit.cli.launch`).
"""

from __future__ import annotations

import argparse
from typing import Any

from vitkit.cli.common import percent
from vitkit.cli.launch import add_launch_arguments, launch_processes, launches  # no torch


def register(commands: argparse._SubParsersAction) -> None:
    from vitkit.cli.train_flags import add_train_arguments  # no torch: flags come from the settings' dataclasses

    parser = commands.add_parser(
        "train",
        help="train a model (default: vit_digits_stem on the built-in digits data set)",
        description="Train a Vision Transformer. With no arguments: vit_digits_stem on scikit-learn's 8x8 digits.",
    )
    add_train_arguments(parser)
    add_launch_arguments(parser)
    parser.set_defaults(func=run)


def format_epoch_line(record: dict[str, Any], epochs: int) -> str:
    """One line per epoch: loss, accuracies, learning rate, throughput."""
    ema = f"  ema val acc {100 * record['ema_val_acc']:6.2f}%" if record.get("ema_val_acc") is not None else ""
    return (
        f"epoch {record['epoch']:>{len(str(epochs))}}/{epochs}  loss {record['train_loss']:.4f}  "
        f"train acc {100 * record['train_acc']:6.2f}%  val acc {100 * record['val_acc']:6.2f}%{ema}  "
        f"lr {record['lr']:.2e}  {record['images_per_s']:,.0f} img/s  {record['epoch_time_s']:.1f}s"
    )


def run(args: argparse.Namespace) -> int:
    """Train a model, one line per epoch; with --nproc N > 1 start N copies of this command under torchrun."""
    from vitkit import training
    from vitkit.cli.train_flags import config_from_args, given_settings
    from vitkit.training import distributed
    from vitkit.training.folder_recipe import apply_recipe, describe_recipe

    config, facts = apply_recipe(config_from_args(args), given_settings(args))
    ctx = distributed.context_from_env()
    if facts is not None and ctx.is_main:
        print(
            f"recipe for {config.data_dir} ({facts.describe()}): {describe_recipe(config.recipe or {}, facts)} "
            "(flags given win; --no-auto-recipe: the fixed defaults)", flush=True,
        )  # fmt: skip
    if launches(args):
        print(f"run folder: {launch_processes(args, config)}")  # rank 0 of the processes printed the epochs
        return 0
    result = training.train(
        config, on_epoch_end=lambda record: print(format_epoch_line(record, config.epochs), flush=True)
    )
    if not ctx.is_main:
        return 0
    best = result.best_val_acc
    print(f"run folder: {result.run_dir}" + (f"  (best val acc {percent(best)})" if best is not None else ""))
    return 0
