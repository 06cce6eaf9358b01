"""`vitkit train`: train a model, one line per epoch; `--nproc N` starts N processes through torchrun, and with
`--nnodes` / `--rdzv-endpoint` on each of several machines, joins them into one run (torchrun's c10d rendezvous).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from vitkit.cli.common import int_at_least, percent
from vitkit.training.config import AUTO_RESUME, TrainConfig, check_batch_split  # no torch

RESTARTABLE_STORE = "TORCH_DISABLE_SHARE_RDZV_TCP_STORE"  # see torchrun_env


def register(commands: argparse._SubParsersAction) -> None:
    from vitkit.cli.train_flags import add_train_arguments  # no torch: flags come from the settings' dataclasses

    parser = commands.add_parser(
        "train",
        help="train a model (default: vit_digits_stem on the built-in digits data set)",
        description="Train a Vision Transformer. With no arguments: vit_digits_stem on scikit-learn's 8x8 digits.",
    )
    add_train_arguments(parser)
    launch_group = parser.add_argument_group("processes and machines (torchrun; see docs/guides/multi-node.md)")
    launch_group.add_argument(
        "--nproc", type=int_at_least(1), default=1,
        help="processes on this machine: starts torchrun with N processes (DistributedDataParallel, or FSDP2 with "
        "--shard-model) (default: 1)",
    )  # fmt: skip
    launch_group.add_argument(
        "--nnodes", type=node_count, default="1", metavar="N|MIN:MAX",
        help="machines in the run, or the range an elastic run accepts; each runs this command (default: 1)",
    )  # fmt: skip
    launch_group.add_argument(
        "--node-rank", type=int_at_least(0), default=None, metavar="R",
        help="this machine's number; node 0 hosts the rendezvous at --rdzv-endpoint (default: the machine whose "
        "name or address the endpoint names). Global ranks are assigned at the rendezvous",
    )  # fmt: skip
    launch_group.add_argument(
        "--rdzv-endpoint", default=None, metavar="HOST:PORT",
        help="where the machines meet (a host every node reaches, a free port); needed with --nnodes",
    )  # fmt: skip
    launch_group.add_argument(
        "--rdzv-id", default=None, metavar="ID",
        help="the job's name at the rendezvous, the same on every node (default: vitkit-<run name>)",
    )  # fmt: skip
    launch_group.add_argument(
        "--max-restarts", type=int_at_least(0), default=0, metavar="K",
        help="restart the processes of all machines up to K times after a failure; they continue from the run "
        "folder's last checkpoint (--resume auto) (default: 0)",
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


def node_count(text: str) -> str:
    """argparse type for --nnodes: ``N`` or ``MIN:MAX``, as torchrun takes it."""
    parts = text.split(":")
    try:
        counts = [int(part) for part in parts]
    except ValueError:
        counts = []
    if len(counts) not in (1, 2) or min(counts) < 1 or counts != sorted(counts):
        raise argparse.ArgumentTypeError(f"expected a node count N or a range MIN:MAX (MIN <= MAX), got {text!r}")
    return text


def is_multi_node(nnodes: str) -> bool:
    return nnodes.split(":")[-1] != "1"


def torchrun_command(args: argparse.Namespace, config_file: Path, run_name: str) -> list[str]:
    """The torchrun command that runs ``vitkit train --config FILE`` in ``args.nproc`` processes on this machine:
    standalone on one machine, else joining the others at ``args.rdzv_endpoint`` (c10d rendezvous)."""
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={args.nproc}"]
    if args.rdzv_endpoint is None:
        command.append("--standalone")
    else:
        command += [
            f"--nnodes={args.nnodes}", "--rdzv-backend=c10d", f"--rdzv-endpoint={args.rdzv_endpoint}",
            f"--rdzv-id={args.rdzv_id or f'vitkit-{run_name}'}",
        ]  # fmt: skip
        if args.node_rank is not None:
            command.append(f"--rdzv-conf=is_host={str(args.node_rank == 0).lower()}")
    if args.max_restarts:
        command.append(f"--max-restarts={args.max_restarts}")
    return [*command, "-m", "vitkit", "train", "--config", str(config_file)]


def check_launch(args: argparse.Namespace, config: TrainConfig) -> None:
    """Settings that several machines cannot run with, named before anything starts."""
    multi_node = is_multi_node(args.nnodes)
    if multi_node and args.rdzv_endpoint is None:
        raise ValueError(f"--nnodes {args.nnodes} needs --rdzv-endpoint HOST:PORT, where the machines meet")
    if args.rdzv_endpoint is not None and ":" not in args.rdzv_endpoint:
        raise ValueError(f"--rdzv-endpoint must be HOST:PORT, got {args.rdzv_endpoint!r}")
    if multi_node and config.out is None and config.name is None and config.resume in (None, AUTO_RESUME):
        raise ValueError(
            "a run on several machines needs --out DIR (a folder on storage all of them share) or --name: "
            "each machine would otherwise name the run folder by its own clock"
        )
    if ":" not in args.nnodes:
        check_batch_split(config.batch_size, int(args.nnodes) * args.nproc)


def torchrun_env(max_restarts: int) -> dict[str, str]:
    """torchrun's environment. With restarts, each rendezvous round gets a fresh store for the processes: by
    default torchrun (2.4 to at least 2.14) shares the rendezvous' TCP store with them across rounds, so a restarted
    group reads the addresses its dead predecessors left there and cannot connect."""
    return {**os.environ, **({RESTARTABLE_STORE: "1"} if max_restarts else {})}


def launch(command: list[str], description: str, env: dict[str, str]) -> None:
    """Run a torchrun ``command`` and wait for it."""
    print(f"starting {description}: {' '.join(command)}", flush=True)
    returncode = subprocess.run(command, env=env, check=False).returncode
    if returncode != 0:
        raise ChildProcessError(
            f"distributed training ({description}) failed (torchrun exit code {returncode}); "
            "the processes' own error messages are above"
        )


def run(args: argparse.Namespace) -> int:
    """Train a model, one line per epoch; with --nproc N > 1 start N copies of this command under torchrun."""
    from vitkit import training
    from vitkit.cli.train_flags import config_from_args, given_settings
    from vitkit.io import write_json
    from vitkit.training import distributed
    from vitkit.training.config import TRAIN_CONFIG_FILE
    from vitkit.training.folder_recipe import apply_recipe, describe_recipe

    config, facts = apply_recipe(config_from_args(args), given_settings(args))
    ctx = distributed.context_from_env()
    if facts is not None and ctx.is_main:
        print(
            f"recipe for {config.data_dir} ({facts.describe()}): {describe_recipe(config.recipe or {}, facts)} "
            "(flags given win; --no-auto-recipe: the fixed defaults)", flush=True,
        )  # fmt: skip
    launches = args.nproc > 1 or is_multi_node(args.nnodes) or args.rdzv_endpoint is not None or args.max_restarts
    if launches and not ctx.distributed:
        check_launch(args, config)
        config = training.prepare_config(config)  # one run folder for all the processes
        description = f"{args.nproc} training process(es)" + (
            f" on this machine of --nnodes {args.nnodes}" if is_multi_node(args.nnodes) else ""
        )
        with tempfile.TemporaryDirectory() as tmp:
            config_file = Path(tmp) / TRAIN_CONFIG_FILE
            write_json(config.to_dict(), config_file)
            command = torchrun_command(args, config_file, Path(config.out).name)
            launch(command, description, torchrun_env(args.max_restarts))
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
