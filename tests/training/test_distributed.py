"""More than one process: DDP with gloo on the CPU, checked against itself, against one process, and on resume.

With a global batch B split as B / world per process, DistributedSampler deals sample i of the epoch's permutation
to process i mod world, so each optimizer step of the 2 processes sees exactly the single process's batch. Only
the float summation order differs (DDP averages two half-batch means): the measured max |diff| of the weights
after 22 optimizer steps is 6e-6 (AdamW divides by sqrt(v), which magnifies rounding in near-zero gradients);
the test allows DDP_TOLERANCE.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from training_helpers import assert_same_weights, run_process_tree, tiny_config

from vitkit.io import load_safetensors, write_json
from vitkit.training import train
from vitkit.training.metrics import read_metrics

DDP_TOLERANCE = 5e-5
RECIPE = dict(epochs=2, batch_size=64, accum_steps=2, drop_path=0.0, dropout=0.0, mixup=0.0, cutmix=0.0)


@pytest.fixture(scope="module")
def ddp_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The results of ddp_worker.py under `torchrun --nproc_per_node=2` (about 10 s)."""
    out = tmp_path_factory.mktemp("ddp")
    config_file = out / "ddp.json"
    write_json(tiny_config(out / "ddp", **RECIPE).to_dict(), config_file)
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        str(Path(__file__).with_name("ddp_worker.py")), str(config_file), str(out),
    ]  # fmt: skip
    run_process_tree(command, timeout=300)
    return out


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


def test_nan_on_one_process_stops_all_at_the_same_step(ddp_out: Path) -> None:
    outcomes = [json.loads((ddp_out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert outcomes[0]["step"] == outcomes[1]["step"] == 4
    assert "gradient norm became nan" in outcomes[0]["error"]  # rank 1's NaN reached it through the all-reduce
    assert "loss became nan" in outcomes[1]["error"]


def test_nproc_starts_torchrun_itself(ddp_out: Path, tiny) -> None:
    """`vitkit train --nproc 2` runs the same computation as torchrun started by hand."""
    config = tiny("nproc", **RECIPE)
    config_file = Path(config.out).parent / "nproc.json"
    write_json(config.to_dict(), config_file)
    run_process_tree([sys.executable, "-m", "vitkit", "-q", "train", "--nproc", "2", "--config", str(config_file)], 300)
    run_dir = Path(config.out)
    assert_same_weights(load_safetensors(ddp_out / "rank0.safetensors"), load_safetensors(run_dir / "last.safetensors"))
    assert [r["epoch"] for r in read_metrics(run_dir)] == [1, 2]
