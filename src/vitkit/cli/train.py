"""`vitkit train`: train a model, one line per epoch."""

from __future__ import annotations

import argparse

from vitkit.cli.common import percent


def register(commands: argparse._SubParsersAction) -> None:
    from vitkit.training.config import add_train_arguments

    parser = commands.add_parser(
        "train",
        help="train a model (default: vit_digits on the built-in digits data set)",
        description="Train a Vision Transformer. With no arguments: vit_digits on scikit-learn's 8x8 digits.",
    )
    add_train_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Train a model, one line per epoch; with --nproc N > 1 the training library starts N processes via torchrun."""
    from vitkit import training
    from vitkit.training import distributed

    config = training.config_from_args(args)
    result = training.train(
        config, on_epoch_end=lambda record: print(training.format_epoch_line(record, config.epochs), flush=True)
    )
    ctx = distributed.context_from_env()
    if not ctx.is_main or (config.nproc > 1 and not ctx.distributed):
        return 0  # another process trained and reported (rank 0 of the torchrun that --nproc started)
    best = result.best_val_acc
    print(f"run folder: {result.run_dir}" + (f"  (best val acc {percent(best)})" if best is not None else ""))
    return 0
