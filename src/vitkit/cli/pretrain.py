"""`vitkit pretrain`: masked-autoencoder pre-training of an encoder on unlabelled pixels, one line per epoch; with
`--nproc N` (and the other flags of :mod:`vitkit.cli.launch`) in N processes started through torchrun."""

from __future__ import annotations

import argparse
import dataclasses

from vitkit.cli.common import fraction, int_at_least
from vitkit.cli.launch import add_launch_arguments, launch_processes, launches  # no torch

MAE_FLAGS = ("mask_ratio", "decoder_dim", "decoder_depth", "decoder_heads", "norm_pix_loss")  # MAESettings' fields


def register(commands: argparse._SubParsersAction) -> None:
    from vitkit.cli.train_flags import add_train_arguments  # no torch: flags come from the settings' dataclasses

    parser = commands.add_parser(
        "pretrain",
        help="pre-train an encoder as a masked autoencoder (no labels used)",
        description="Masked-autoencoder pre-training (He et al. 2021): most patches are hidden, the encoder sees the "
        "rest, a light decoder reconstructs the hidden ones' normalised pixels. Takes the data and model flags of "
        "`vitkit train`; the run folder's model.safetensors is the encoder: fine-tune it with "
        "`vitkit train --init-from RUN_DIR`.",
    )
    group = parser.add_argument_group("masked autoencoder (with --resume: the run's, unless given)")
    group.add_argument(
        "--mask-ratio", type=fraction, metavar="X", default=None, help="share of patches hidden (default: 0.75)"
    )
    group.add_argument(
        "--decoder-dim", type=int_at_least(1), metavar="N", default=None, help="decoder width (default: 128)"
    )
    group.add_argument(
        "--decoder-depth", type=int_at_least(1), metavar="N", default=None, help="decoder blocks (default: 2)"
    )
    group.add_argument(
        "--decoder-heads", type=int_at_least(1), metavar="N", default=None, help="decoder heads (default: 4)"
    )
    group.add_argument(
        "--norm-pix-loss", action=argparse.BooleanOptionalAction, default=None,
        help="reconstruct each patch's pixels normalised by their own mean and spread (default); "
        "--no-norm-pix-loss: the pixels themselves",
    )  # fmt: skip
    add_train_arguments(parser)
    add_launch_arguments(parser)
    parser.set_defaults(func=run)


def mae_flag(name: str, value: object) -> list[str]:
    """An MAE setting as the command line takes it: ``--flag VALUE``, or ``--flag`` / ``--no-flag`` for a switch."""
    flag = name.replace("_", "-")
    if isinstance(value, bool):
        return [f"--{flag}" if value else f"--no-{flag}"]
    return [f"--{flag}", str(value)]


def run(args: argparse.Namespace) -> int:
    from vitkit.cli.train_flags import config_from_args
    from vitkit.pretrain.run import MAESettings, pretrain, saved_settings
    from vitkit.training import distributed
    from vitkit.training.config import AUTO_RESUME

    config = config_from_args(args)
    base = saved_settings(config.resume) if config.resume not in (None, AUTO_RESUME) else MAESettings()
    typed = {name: getattr(args, name) for name in MAE_FLAGS if getattr(args, name) is not None}
    settings = dataclasses.replace(base, **typed)
    if launches(args):  # each process gets the resolved settings, the MAE's as flags
        flags = [part for name, value in dataclasses.asdict(settings).items() for part in mae_flag(name, value)]
        run_dir = launch_processes(args, config.replace(auto_recipe=False), flags)
        print(f"run folder: {run_dir}  (fine-tune with `vitkit train --init-from {run_dir}`)")
        return 0

    def report(record: dict) -> None:
        print(
            f"epoch {record['epoch']}/{config.epochs}  loss {record['train_loss']:.4f}  "
            f"val loss {record['val_loss']:.4f}  {record['epoch_time_s']:.1f}s",
            flush=True,
        )

    result = pretrain(config, settings, on_epoch_end=report)
    if not distributed.context_from_env().is_main:  # rank 0 reports
        return 0
    if len(result.history) < config.epochs:  # stopped at --steps
        print(f"run folder: {result.run_dir}  (continue with `vitkit pretrain --resume {result.run_dir} --steps 0`)")
    else:
        print(f"run folder: {result.run_dir}  (fine-tune with `vitkit train --init-from {result.run_dir}`)")
    return 0
