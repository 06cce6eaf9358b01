"""Starting a command in several processes: the torchrun flags of `vitkit train` and `vitkit pretrain`, the
torchrun command they build, and the launch itself. `--nproc N` starts N processes through torchrun on this
machine; with `--nnodes` / `--rdzv-endpoint` on each of several machines, they join one run (c10d rendezvous).
Each process runs the same subcommand with the resolved settings (``--config FILE``), so all use one run folder.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from vitkit.cli.common import int_at_least
from vitkit.training.config import AUTO_RESUME, TRAIN_CONFIG_FILE, TrainConfig, check_batch_split  # no torch

RESTARTABLE_STORE = "TORCH_DISABLE_SHARE_RDZV_TCP_STORE"  # see torchrun_env


def add_launch_arguments(parser: argparse.ArgumentParser) -> None:
    """--nproc, --nnodes, --node-rank, --rdzv-endpoint, --rdzv-id and --max-restarts."""
    group = parser.add_argument_group("processes and machines (torchrun; see docs/guides/multi-node.md)")
    group.add_argument(
        "--nproc", type=int_at_least(1), default=1,
        help="processes on this machine: starts torchrun with N processes, which share each batch "
        "(DistributedDataParallel, or FSDP2 with `vitkit train --shard-model`) (default: 1)",
    )  # fmt: skip
    group.add_argument(
        "--nnodes", type=node_count, default="1", metavar="N|MIN:MAX",
        help="machines in the run, or the range an elastic run accepts; each runs this command (default: 1)",
    )  # fmt: skip
    group.add_argument(
        "--node-rank", type=int_at_least(0), default=None, metavar="R",
        help="this machine's number; node 0 hosts the rendezvous at --rdzv-endpoint (default: the machine whose "
        "name or address the endpoint names). Global ranks are assigned at the rendezvous",
    )  # fmt: skip
    group.add_argument(
        "--rdzv-endpoint", default=None, metavar="HOST:PORT",
        help="where the machines meet (a host every node reaches, a free port); needed with --nnodes",
    )  # fmt: skip
    group.add_argument(
        "--rdzv-id", default=None, metavar="ID",
        help="the job's name at the rendezvous, the same on every node (default: vitkit-<run name>)",
    )  # fmt: skip
    group.add_argument(
        "--max-restarts", type=int_at_least(0), default=0, metavar="K",
        help="restart the processes of all machines up to K times after a failure; they continue from the run "
        "folder's last checkpoint (--resume auto) (default: 0)",
    )  # fmt: skip


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


def torchrun_command(
    args: argparse.Namespace, config_file: Path, run_name: str, extra: Sequence[str] = ()
) -> list[str]:
    """The torchrun command that runs ``vitkit <args.command> --config FILE [extra]`` in ``args.nproc`` processes on
    this machine: standalone on one machine, else joining the others at ``args.rdzv_endpoint`` (c10d rendezvous)."""
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
    return [*command, "-m", "vitkit", args.command, "--config", str(config_file), *extra]


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
            f"distributed run ({description}) failed (torchrun exit code {returncode}); "
            "the processes' own error messages are above"
        )


def launches(args: argparse.Namespace) -> bool:
    """Whether the launch flags ask for torchrun (in a process that torchrun did not start itself)."""
    from vitkit.training import distributed

    asked = args.nproc > 1 or is_multi_node(args.nnodes) or args.rdzv_endpoint is not None or args.max_restarts
    return bool(asked) and not distributed.context_from_env().distributed


def launch_processes(args: argparse.Namespace, config: TrainConfig, extra: Sequence[str] = ()) -> Path:
    """Start ``vitkit <args.command>`` in the processes the launch flags ask for, with ``config`` resolved first (one
    run folder for all of them) and ``extra`` flags, and wait for them; returns the run folder."""
    from vitkit.io import write_json
    from vitkit.training.run import prepare_config

    check_launch(args, config)
    config = prepare_config(config)
    description = f"{args.nproc} {args.command} process(es)" + (
        f" on this machine of --nnodes {args.nnodes}" if is_multi_node(args.nnodes) else ""
    )
    with tempfile.TemporaryDirectory() as tmp:
        config_file = Path(tmp) / TRAIN_CONFIG_FILE
        write_json(config.to_dict(), config_file)
        command = torchrun_command(args, config_file, Path(str(config.out)).name, extra)
        launch(command, description, torchrun_env(args.max_restarts))
    return Path(str(config.out))
