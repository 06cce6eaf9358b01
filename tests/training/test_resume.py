"""Runs that survive: a resumed run ends bitwise equal to an uninterrupted one, even after kill -9 mid-epoch."""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import signal
from multiprocessing.connection import Connection
from pathlib import Path

import pytest
import torch
from training_helpers import assert_same_weights, without_timings

from vitkit.io import load_safetensors
from vitkit.model import VisionTransformer
from vitkit.training import TrainConfig, cpu_kernels, load_run, load_train_config, train
from vitkit.training.checkpoint import load_checkpoint
from vitkit.training.cpu_kernels import CpuKernels
from vitkit.training.metrics import read_metrics


class Crash(Exception):
    pass


def crash_at(step: int):
    def on_step_end(epoch: int, done: int, model: torch.nn.Module) -> None:
        if done == step:
            raise Crash(f"simulated crash after step {step}")

    return on_step_end


def resume(run_dir: Path, **changes: object):
    return train(load_train_config(run_dir).replace(resume=str(run_dir), **changes))


def assert_same_run(reference: Path, resumed: Path) -> None:
    for name in ("model.safetensors", "last.safetensors", "best.safetensors"):
        assert_same_weights(load_safetensors(reference / name), load_safetensors(resumed / name))
    _, state_a = load_checkpoint(reference)
    _, state_b = load_checkpoint(resumed)
    assert_same_weights(state_a["ema"], state_b["ema"])
    assert without_timings(read_metrics(reference)) == without_timings(read_metrics(resumed))


def test_crash_mid_epoch_then_resume_is_bitwise_identical(tiny) -> None:
    # Every source of randomness at once: dropout, stochastic depth, MixUp/CutMix, augmentation, EMA.
    recipe = dict(epochs=3, save_every=5, mixup=0.2, cutmix=1.0, drop_path=0.1, dropout=0.1)
    reference = train(tiny("reference", **{**recipe, "save_every": 0}))  # checkpoints change nothing it computes
    crashed = tiny("crashed", **recipe)
    steps_per_epoch = reference.history[0]["step"]
    crash_step = steps_per_epoch + 12  # mid-epoch 2, a few steps after a save_every checkpoint
    with pytest.raises(Crash):
        train(crashed, on_step_end=crash_at(crash_step))
    _, state = load_checkpoint(Path(crashed.out))
    assert state["epoch"] == 1 and 0 < state["step_in_epoch"] < steps_per_epoch  # really mid-epoch
    assert len(read_metrics(Path(crashed.out))) == 1
    with pytest.raises(FileNotFoundError, match="the run did not finish: continue it with `vitkit train --resume"):
        load_run(crashed.out)
    # an interrupted run can still be evaluated, asked for by its checkpoint's path
    unfinished = VisionTransformer.from_pretrained(Path(crashed.out) / "last.safetensors")
    assert_same_weights(unfinished.state_dict(), load_safetensors(Path(crashed.out) / "last.safetensors"))
    resumed = resume(Path(crashed.out))
    assert_same_run(Path(reference.run_dir), resumed.run_dir)
    assert without_timings(resumed.history) == without_timings(reference.history)


def _train_quietly(config: TrainConfig, steps: Connection) -> None:
    """The body of a forked child: a real training process, killed from outside; sends each finished step."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    train(config, on_step_end=lambda epoch, step, model: steps.send(step))


def test_kill_9_mid_epoch_then_resume_is_bitwise_identical(tiny) -> None:
    # 179 steps of batch 8 and a checkpoint after every step: the kill lands mid-epoch, quite possibly mid-write.
    recipe = dict(epochs=1, batch_size=8, save_every=1, drop_path=0.1)
    victim = tiny("victim", **recipe)
    fork = multiprocessing.get_context("fork")  # a real process, without paying for a fresh interpreter
    steps, sender = fork.Pipe(duplex=False)
    process = fork.Process(target=_train_quietly, args=(victim, sender))
    process.start()
    sender.close()
    try:
        # the first checkpoint (save_every=1: written before the step's callback), or the child's end
        ready = multiprocessing.connection.wait([steps, process.sentinel])
        assert steps in ready, "the training process ended before its first checkpoint"
    finally:
        os.kill(process.pid, signal.SIGKILL)  # while it trains on: mid-step or mid-write
        process.join()
    assert process.exitcode == -signal.SIGKILL
    assert not (Path(victim.out) / "model.safetensors").exists()
    _, state = load_checkpoint(Path(victim.out))
    assert state["epoch"] == 0 and state["step_in_epoch"] > 0

    resumed = resume(Path(victim.out), save_every=0)  # checkpoints change nothing a run computes: the rest of the
    reference = train(tiny("reference", **{**recipe, "save_every": 0}))  # epoch and the reference skip them
    assert_same_run(reference.run_dir, resumed.run_dir)


@pytest.mark.pictures  # a run stopped by --steps draws none
def test_steps_stop_with_a_checkpoint_then_resume_may_extend_epochs_but_not_change_the_recipe(tiny) -> None:
    run = train(tiny(epochs=1, steps=5))
    _, state = load_checkpoint(run.run_dir)
    assert state["step"] == 5 and run.history == []  # stopped mid-epoch: no epoch ended, so no validation ran
    assert not (run.run_dir / "model.safetensors").exists() and not (run.run_dir / "explain").exists()
    run = resume(run.run_dir, steps=0)
    assert [r["epoch"] for r in run.history] == [1] and (run.run_dir / "model.safetensors").exists()
    with pytest.raises(ValueError, match=r"cannot resume .*lr 0\.001 -> 0\.1"):
        resume(run.run_dir, lr=0.1)
    longer = resume(run.run_dir, epochs=2)
    assert [r["epoch"] for r in longer.history] == [1, 2]
    assert load_train_config(run.run_dir).epochs == 2


def test_a_finished_run_folder_is_not_overwritten(tiny) -> None:
    config = tiny(epochs=1)
    train(config)
    with pytest.raises(ValueError, match="already holds a run: continue it with --resume"):
        train(config)


def test_resume_before_the_first_checkpoint_starts_over_with_the_saved_settings(tiny, caplog) -> None:
    """A run killed before its first checkpoint left only its settings: --resume trains it from the start."""
    config = tiny("killed", epochs=1, steps=5, lr=2e-3)
    run_dir = Path(config.out)
    with pytest.raises(Crash):
        train(config, on_step_end=crash_at(3))  # the first checkpoint comes with the last step, the 5th
    assert not (run_dir / "last.safetensors").exists()
    with caplog.at_level("WARNING"):
        resume(run_dir)
    assert "has no checkpoint" in caplog.text and "starting it from the beginning" in caplog.text
    assert load_train_config(run_dir).lr == 2e-3
    reference = train(tiny("reference", epochs=1, steps=5, lr=2e-3))
    _, state = load_checkpoint(run_dir)
    assert state["step"] == 5
    assert_same_weights(load_safetensors(reference.run_dir / "last.safetensors"),
                        load_safetensors(run_dir / "last.safetensors"))  # fmt: skip
    assert_same_weights(load_checkpoint(reference.run_dir)[1]["ema"], state["ema"])


def test_a_resumed_run_keeps_its_cpu_kernels_decision_unless_the_setting_changed(tiny, monkeypatch, caplog) -> None:
    """A second timing of oneDNN may decide otherwise, and oneDNN sums in another order: the resumed run takes the
    decision its checkpoint recorded; a changed --cpu-kernels decides anew."""
    settings: list[str] = []

    def choose(setting: str, *args: object) -> CpuKernels:
        settings.append(setting)
        return CpuKernels(onednn_products=False, recompute_gelu=True, reason=f"decision {len(settings)}")

    monkeypatch.setattr(cpu_kernels, "choose", choose)
    with caplog.at_level("INFO", logger="vitkit.training.loop"):
        run = train(tiny(epochs=1, steps=1))
        assert "CPU kernels: GELU outputs recomputed in the backward pass (decision 1)" in caplog.text
        for steps in (2, 3):  # resumed twice: the decision stays the first one
            caplog.clear()
            resume(run.run_dir, steps=steps)
            assert "(decision 1; as decided when the run started)" in caplog.text
        caplog.clear()
        resume(run.run_dir, steps=4, cpu_kernels="on")
        assert "(decision 2)" in caplog.text
    assert settings == ["auto", "on"]
