"""A loss that becomes NaN or infinite stops the run with a clear error and keeps the last good checkpoint."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from vitkit.io import load_safetensors
from vitkit.training import NonFiniteLossError, train
from vitkit.training.checkpoint import load_checkpoint


def poison_after(step: int, value: float):
    """After optimizer step `step` (and its checkpoint) the weights turn bad, as in a diverging run."""

    def on_step_end(epoch: int, done: int, model: torch.nn.Module) -> None:
        if done == step:
            with torch.no_grad():
                model.head.weight.fill_(value)

    return on_step_end


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tiny, value: float) -> None:
    config = tiny(save_every=4)
    steps_per_epoch = 22  # 1,437 digits // batch 64
    bad_step = steps_per_epoch + 5  # in epoch 2; the last checkpoint is from step 24
    with pytest.raises(NonFiniteLossError) as caught:
        train(config, on_step_end=poison_after(bad_step, value))
    message = str(caught.value)
    assert f"at epoch 2, optimizer step {bad_step + 1}" in message
    assert "last good checkpoint (last.safetensors, step 24)" in message
    assert (caught.value.epoch, caught.value.step) == (2, bad_step + 1)
    weights, state = load_checkpoint(Path(config.out))
    assert state["step"] == 24
    assert all(torch.isfinite(t).all() for t in weights.values())
    assert all(torch.isfinite(t).all() for t in load_safetensors(Path(config.out) / "best.safetensors").values())
    assert not (Path(config.out) / "model.safetensors").exists()


def test_a_non_finite_gradient_with_a_finite_loss_stops_before_the_update(tiny) -> None:
    """The gradient-norm check: a hook turns the head's gradient into NaN from step 6 on, the loss stays finite."""
    config = tiny(epochs=1)

    def poison_gradients(epoch: int, done: int, model: torch.nn.Module) -> None:
        if done == 5:
            model.head.weight.register_hook(lambda grad: grad * math.nan)

    with pytest.raises(NonFiniteLossError, match="the gradient norm became nan at epoch 1, optimizer step 6") as caught:
        train(config, on_step_end=poison_gradients)
    assert caught.value.step == 6
    assert "no checkpoint had been written yet" in str(caught.value)
    assert not (Path(config.out) / "last.safetensors").exists()
