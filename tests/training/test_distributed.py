"""More than one process: DDP with gloo on the CPU, checked against itself, against one process, and on resume;
two simulated nodes (two torchrun agents meeting at a c10d rendezvous), one of whose workers is killed; and a model
sharded with FSDP2 between two processes started as srun starts them.

With a global batch B split as B / world per process, DistributedSampler deals sample i of the epoch's permutation
to process i mod world, so each optimizer step of the 2 processes sees exactly the single process's batch. Only
the float summation order differs (DDP averages two half-batch means): the measured max |diff| of the weights
after 22 optimizer steps is 6e-6 (AdamW divides by sqrt(v), which magnifies rounding in near-zero gradients);
the test allows DDP_TOLERANCE.
"""

from __future__ import annotations

import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from training_helpers import (
    DDP_RECIPE,
    assert_same_weights,
    started_process_trees,
    subprocess_env,
    tiny_config,
    wait_for_success,
    without_timings,
)

from vitkit import VisionTransformer, cli
from vitkit.cli.launch import torchrun_env
from vitkit.io import load_safetensors, write_json
from vitkit.training import train
from vitkit.training.checkpoint import load_sharded_checkpoint
from vitkit.training.distributed import DistContext, context_from_env, init_process_group
from vitkit.training.loop import ema_with_warmup
from vitkit.training.metrics import read_metrics
from vitkit.training.optim import build_optimizer

DDP_TOLERANCE = 5e-5
RECIPE = DDP_RECIPE  # the runs here and conftest.py's `ddp_out` (2 processes on one node, started by torchrun)
SAVE_EVERY = 3  # checkpoints at steps 3, 6, 9, 11 (epoch 1's end), 12, 15 ...: a killed worker costs at most 3 steps
PAUSE_STEP = 16  # in epoch 2 (11 steps per epoch), one step after a checkpoint
STEPS = 22


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def config_file(out: Path, name: str, **changes: object) -> Path:
    """tiny_config(out / name, **RECIPE, **changes) written as out / name.json."""
    path = out / f"{name}.json"
    write_json(tiny_config(out / name, **{**RECIPE, **changes}).to_dict(), path)
    return path


def test_processes_end_with_identical_weights(ddp_out: Path) -> None:
    rank0, rank1 = (load_safetensors(ddp_out / f"rank{r}.safetensors") for r in (0, 1))
    assert_same_weights(rank0, rank1)
    assert_same_weights(rank0, load_safetensors(ddp_out / "ddp" / "last.safetensors"))  # written by rank 0


def test_two_processes_match_one_process(ddp_out: Path, tiny) -> None:
    single = train(tiny("single", **RECIPE))
    assert_same_weights(
        load_safetensors(ddp_out / "rank0.safetensors"), load_safetensors(single.run_dir / "last.safetensors"),
        atol=DDP_TOLERANCE,
    )  # fmt: skip
    for ddp_record, record in zip(read_metrics(ddp_out / "ddp"), single.history, strict=True):
        assert ddp_record["step"] == record["step"]
        assert ddp_record["train_loss"] == pytest.approx(record["train_loss"], abs=1e-4)
        assert ddp_record["val_acc"] == pytest.approx(record["val_acc"], abs=1 / 360)


def test_distributed_resume_is_bitwise_identical(ddp_out: Path) -> None:
    for name in ("last.safetensors", "model.safetensors", "best.safetensors"):
        assert_same_weights(load_safetensors(ddp_out / "ddp" / name), load_safetensors(ddp_out / "resumed" / name))


def test_every_process_runs_rank_0s_cpu_kernels_decision(ddp_out: Path) -> None:
    """ddp_worker.py makes each rank's own decision differ (rank 1's takes oneDNN): rank 0's is taken by both, and
    the resumed run takes it back from the checkpoint."""
    rank0 = ["rank 0's decision", "rank 0's decision; as decided when the run started"]
    for rank in (0, 1):
        assert json.loads((ddp_out / f"rank{rank}.json").read_text())["cpu_kernels"] == rank0


def test_nan_on_one_process_stops_all_at_the_same_step(ddp_out: Path) -> None:
    outcomes = [json.loads((ddp_out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert outcomes[0]["step"] == outcomes[1]["step"] == 4
    assert "gradient norm became nan" in outcomes[0]["error"]  # rank 1's NaN reached it through the all-reduce
    assert "loss became nan" in outcomes[1]["error"]


# --- several nodes ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run folder of `vitkit train --nnodes 2 --node-rank R --rdzv-endpoint ... --nproc 1` run as two agents
    on this machine (about 15 s): the command line starting torchrun itself, as `--nproc N` does on one machine
    (the torchrun command it builds is tested in tests/test_cli.py)."""
    out = tmp_path_factory.mktemp("nodes")
    settings, endpoint = config_file(out, "run", save_every=SAVE_EVERY), f"127.0.0.1:{free_port()}"
    agents = [
        [sys.executable, "-m", "vitkit", "-q", "train", "--config", str(settings), "--nnodes", "2",
         "--node-rank", str(rank), "--rdzv-endpoint", endpoint, "--nproc", "1"]
        for rank in (0, 1)
    ]  # fmt: skip
    with started_process_trees(agents) as processes:
        wait_for_success(processes, timeout=300)
    return out / "run"


def test_two_nodes_match_two_processes_on_one_node(two_nodes: Path, ddp_out: Path) -> None:
    """One process on each of two nodes, started by `vitkit train`, computes what two processes on one node started
    by torchrun by hand do (the same all-reduces)."""
    last = load_safetensors(two_nodes / "last.safetensors")
    assert_same_weights(load_safetensors(ddp_out / "rank0.safetensors"), last)
    assert_same_weights(
        load_safetensors(ddp_out / "ddp" / "model.safetensors"), load_safetensors(two_nodes / "model.safetensors")
    )
    assert without_timings(read_metrics(two_nodes)) == without_timings(read_metrics(ddp_out / "ddp"))


def paused_worker(agents: list[subprocess.Popen]) -> int:
    """The process id a worker prints on its agent's standard output (`paused PID`) once it has stopped at
    PAUSE_STEP; fails if both agents' outputs end first (the agents ended)."""
    outputs = {agent.stdout.fileno(): b"" for agent in agents if agent.stdout is not None}
    while outputs:
        ready, _, _ = select.select(list(outputs), [], [])  # blocks until a line or an end arrives
        for fd in ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                del outputs[fd]
                continue
            outputs[fd] += chunk
            paused = re.search(rb"^paused (\d+)$", outputs[fd], re.MULTILINE)
            if paused:
                return int(paused[1])
    raise AssertionError("the agents ended before the worker paused")


def test_a_killed_worker_is_restarted_and_the_run_ends_as_if_uninterrupted(ddp_out: Path, tmp_path: Path) -> None:
    """torchrun started by hand on two nodes with --max-restarts 1; rank 1 is killed with SIGKILL in epoch 2. Both
    worker groups restart, continue from the last checkpoint by themselves, and end with the weights of the
    uninterrupted run of 2 processes."""
    settings, endpoint = config_file(tmp_path, "run", save_every=SAVE_EVERY), f"127.0.0.1:{free_port()}"
    agents = [
        [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1", "--rdzv-backend=c10d",
         f"--rdzv-endpoint={endpoint}", "--rdzv-id=kill-test", f"--rdzv-conf=is_host={str(rank == 0).lower()}",
         "--max-restarts=1", str(Path(__file__).with_name("elastic_worker.py")), str(PAUSE_STEP),
         "--config", str(settings)]
        for rank in (0, 1)
    ]  # fmt: skip
    env = torchrun_env(max_restarts=1)
    with started_process_trees(agents, [{**env, **subprocess_env()}] * 2, stdout=subprocess.PIPE) as processes:
        os.kill(paused_worker(processes), signal.SIGKILL)
        wait_for_success(processes, timeout=300)  # their remaining output is a few lines: the pipes never fill
    run_dir, reference = tmp_path / "run", ddp_out / "ddp"
    for name in ("last.safetensors", "model.safetensors", "best.safetensors"):
        assert_same_weights(load_safetensors(reference / name), load_safetensors(run_dir / name))
    assert without_timings(read_metrics(run_dir)) == without_timings(read_metrics(reference))


# --- a sharded model --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sharded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run folder of `vitkit train --shard-model --grad-checkpointing` in two processes started as `srun -n 2`
    starts them: SLURM_* variables, MASTER_ADDR and MASTER_PORT, no torchrun (about 10 s)."""
    out = tmp_path_factory.mktemp("sharded")
    settings = config_file(out, "run", shard_model=True, grad_checkpointing=True)
    base = {k: v for k, v in subprocess_env().items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE")}
    base.update(SLURM_STEP_NUM_TASKS="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    envs = [{**base, "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank)} for rank in (0, 1)]
    command = [sys.executable, "-m", "vitkit", "-q", "train", "--config", str(settings)]
    with started_process_trees([command, command], envs) as processes:
        wait_for_success(processes, timeout=300)
    return out / "run"


def test_sharded_model_trains_as_ddp_does(sharded: Path, ddp_out: Path) -> None:
    """FSDP2 reduce-scatters what DDP all-reduces: the same run, up to the float summation order."""
    assert not (sharded / "last.safetensors").exists() and (sharded / "last.dcp" / ".metadata").is_file()
    assert_same_weights(
        load_safetensors(ddp_out / "ddp" / "model.safetensors"), load_safetensors(sharded / "model.safetensors"),
        atol=DDP_TOLERANCE,
    )  # fmt: skip
    for sharded_record, ddp_record in zip(read_metrics(sharded), read_metrics(ddp_out / "ddp"), strict=True):
        assert sharded_record["train_loss"] == pytest.approx(ddp_record["train_loss"], abs=1e-4)
        assert sharded_record["val_acc"] == pytest.approx(ddp_record["val_acc"], abs=1 / 360)


def test_sharded_checkpoint_loads_resharded_into_one_process(sharded: Path, ddp_out: Path) -> None:
    """The checkpoint of two processes' shards fills one process's whole model, optimizer and EMA."""
    model = VisionTransformer.from_pretrained(sharded)
    ema = torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=ema_with_warmup(0.99), use_buffers=True)
    optimizer = build_optimizer(model, 1e-3, 0.05)
    state = load_sharded_checkpoint(sharded, model, optimizer, ema)
    assert state["step"] == STEPS and len(state["rng"]) == 2
    assert_same_weights(ema.module.state_dict(), load_safetensors(sharded / "model.safetensors"))  # the final EMA
    assert_same_weights(
        model.state_dict(), load_safetensors(ddp_out / "ddp" / "last.safetensors"), atol=DDP_TOLERANCE
    )  # the raw weights, as DDP's run ended
    assert {int(s["step"]) for s in optimizer.state_dict()["state"].values()} == {STEPS}
    assert len(optimizer.state_dict()["state"]) == len(list(model.parameters()))


def test_sharded_run_resumes_on_one_process_and_evaluates(
    sharded: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "resumed"
    shutil.copytree(sharded, run_dir)
    result = train(tiny_config(run_dir, **{**RECIPE, "epochs": 3}, shard_model=True, resume=str(run_dir)))
    assert [r["step"] for r in result.history] == [11, STEPS, 33]
    assert without_timings(result.history[:2]) == without_timings(read_metrics(sharded))
    assert cli.main(["evaluate", str(run_dir), "--json"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["num_samples"] == 360 and evaluated["top1"] == pytest.approx(result.history[-1]["ema_val_acc"])


# --- where a process stands -------------------------------------------------------------------------------------


def test_an_srun_task_reads_slurms_variables_and_torchruns_come_first(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "SLURM_STEP_NUM_TASKS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SLURM_NTASKS", "16")  # a batch script's own variables: not a task of a job step
    monkeypatch.setenv("SLURM_PROCID", "0")
    assert context_from_env() == DistContext()
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "16")
    monkeypatch.setenv("SLURM_PROCID", "11")
    monkeypatch.setenv("SLURM_LOCALID", "3")
    assert context_from_env() == DistContext(rank=11, local_rank=3, world_size=16)
    monkeypatch.setenv("WORLD_SIZE", "4")  # torchrun started inside an srun task: its variables count
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("LOCAL_RANK", "2")
    assert context_from_env() == DistContext(rank=2, local_rank=2, world_size=4)


def test_a_process_without_a_rendezvous_address_says_what_to_export(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.setenv("MASTER_PORT", "29500")
    with pytest.raises(ValueError, match="MASTER_ADDR not set.*export MASTER_ADDR"):
        init_process_group(DistContext(rank=1, local_rank=1, world_size=2), torch.device("cpu"))
