"""The training recipe: EMA, gradient accumulation, bf16 autocast, data workers, augmentation and mixing flags."""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel
from training_helpers import assert_same_weights, write_digit_folder

from vitkit.io import load_safetensors
from vitkit.model import VisionTransformer
from vitkit.training import TrainConfig, load_train_config, train
from vitkit.training.checkpoint import load_checkpoint
from vitkit.training.loop import ema_with_warmup

DETERMINISTIC = dict(drop_path=0.0, dropout=0.0, mixup=0.0, cutmix=0.0)


def test_ema_warm_up_on_a_hand_worked_case() -> None:
    """One weight taking the values 0, 11, 0, 4 with decay 0.25: the warm-up decay (1 + n) / (10 + n) is 2/11 on the
    second update and reaches the cap 0.25 on the third (n = 2: 3/12)."""
    weight = nn.Linear(1, 1, bias=False)
    ema = AveragedModel(weight, multi_avg_fn=ema_with_warmup(0.25), use_buffers=True)
    averages = []
    for value in (0.0, 11.0, 0.0, 4.0):
        weight.weight.data.fill_(value)
        ema.update_parameters(weight)
        averages.append(ema.module.weight.item())
    # 0 (the first update copies); 2/11 * 0 + 9/11 * 11 = 9; 0.25 * 9 + 0.75 * 0 = 2.25; 0.25 * 2.25 + 0.75 * 4 = 3.5625
    assert averages == pytest.approx([0.0, 9.0, 2.25, 3.5625], abs=1e-6)


def test_ema_follows_the_weights_and_is_the_final_model(tiny) -> None:
    from timm.utils.model_ema import ModelEmaV3

    decay = 0.9
    seen: list[dict[str, torch.Tensor]] = []
    result = train(
        tiny(epochs=1, ema_decay=decay),
        on_step_end=lambda epoch, step, model: seen.append({k: v.clone() for k, v in model.state_dict().items()}),
    )
    # The reference is timm's EMA fed the same weights. Its decay at step t is 1 - (1 + (t - 1) / 9) ** -1 =
    # (t - 1) / (t + 8) (warmup_gamma 9, warmup_power 1), capped at `decay`; vitkit's k-th update (k >= 2) uses
    # (1 + n) / (10 + n) after n = k - 1 updates = k / (k + 9): the same at t = k + 1. Both start as a copy.
    model = copy.deepcopy(result.model)
    model.load_state_dict(seen[0])
    reference = ModelEmaV3(model, decay=decay, use_warmup=True, warmup_gamma=9, warmup_power=1)
    for k, weights in enumerate(seen[1:], start=2):
        model.load_state_dict(weights)
        reference.update(model, step=k + 1)
    _, state = load_checkpoint(result.run_dir)
    ema = {k.removeprefix("module."): v for k, v in state["ema"].items() if k.startswith("module.")}
    assert_same_weights(ema, reference.module.state_dict(), atol=1e-6)
    final = load_safetensors(result.run_dir / "model.safetensors")
    assert_same_weights(final, ema)
    assert not torch.equal(final["head.weight"], load_safetensors(result.run_dir / "last.safetensors")["head.weight"])
    assert all(0 <= record["ema_val_acc"] <= 1 for record in result.history)


def test_without_ema_the_final_model_is_the_last_weights(tiny) -> None:
    result = train(tiny(epochs=1, ema_decay=0.0))
    assert result.history[0]["ema_val_acc"] is None
    assert_same_weights(
        load_safetensors(result.run_dir / "model.safetensors"), load_safetensors(result.run_dir / "last.safetensors")
    )


def test_accumulating_two_half_batches_equals_one_full_batch(tiny) -> None:
    full = train(tiny("full", epochs=1, batch_size=64, **DETERMINISTIC))
    halves = train(tiny("halves", epochs=1, batch_size=32, accum_steps=2, **DETERMINISTIC))
    assert full.history[0]["step"] == halves.history[0]["step"] == 22
    # Same samples, same augmentation, same mean loss; only the float summation order differs.
    assert_same_weights(
        load_safetensors(full.run_dir / "last.safetensors"),
        load_safetensors(halves.run_dir / "last.safetensors"),
        atol=1e-5,
    )


def test_data_workers_do_not_change_the_result(tiny) -> None:
    """Augmentation is seeded per (seed, epoch, sample), so worker processes compute exactly the same batches."""
    in_process = train(tiny("w0", epochs=1, workers=0, mixup=0.5, drop_path=0.1))
    with_workers = train(tiny("w2", epochs=1, workers=2, mixup=0.5, drop_path=0.1))
    assert_same_weights(
        load_safetensors(in_process.run_dir / "model.safetensors"),
        load_safetensors(with_workers.run_dir / "model.safetensors"),
    )


def test_bf16_autocast_on_the_cpu(tiny) -> None:
    fp32 = train(tiny("fp32", epochs=1, amp="off"))
    bf16 = train(tiny("bf16", epochs=1, amp="bf16"))
    assert torch.isfinite(torch.tensor(bf16.history[0]["train_loss"]))
    assert bf16.history[0]["train_loss"] != fp32.history[0]["train_loss"]  # autocast really ran in bf16
    assert abs(bf16.history[0]["train_loss"] - fp32.history[0]["train_loss"]) < 0.05


def test_cpu_kernels_on_multiply_every_linear_layer_through_onednn_and_the_run_says_so(
    tiny, monkeypatch, caplog
) -> None:
    """With --cpu-kernels on the trainer runs its forward passes (training and validation) in vitkit.optimize.onednn's
    products mode: each linear layer's forward and input-gradient product go to oneDNN; bf16 autocast keeps its own
    products. The tiny model is below auto's size; the run logs once, at the start, what engaged and why."""
    from vitkit.optimize import onednn

    calls: list[str] = []

    def counted(*args: object, **kwargs: object) -> torch.Tensor:
        calls.append("validation" if torch.is_inference_mode_enabled() else "training")
        return product(*args, **kwargs)

    product = onednn._product
    monkeypatch.setattr(onednn, "_product", counted)
    with caplog.at_level(logging.INFO, logger="vitkit.training.loop"):
        train(tiny("small", epochs=1))
    assert calls == []  # below the size: torch's own products
    assert [r.getMessage() for r in caplog.records if "CPU kernels" in r.getMessage()] == [
        "CPU kernels: none (cpu_kernels=auto: a forward pass of 34,816 images x tokens x width is below 500,000, "
        "where they cost more than they save)"
    ]  # 64 images x 17 tokens x width 32
    caplog.clear()
    steps: list[int] = []
    with caplog.at_level(logging.INFO, logger="vitkit.training.loop"):
        result = train(tiny("fp32", epochs=1, amp="off", cpu_kernels="on"),
                       on_step_end=lambda epoch, step, model: steps.append(step))  # fmt: skip
    assert "CPU kernels: oneDNN products and GELU outputs recomputed in the backward pass (cpu_kernels=on)" in (
        caplog.text
    )
    linears = sum(isinstance(m, nn.Linear) for m in result.model.modules())
    assert steps and calls.count("training") == 2 * linears * len(steps)  # a forward and an input gradient each
    assert calls.count("validation") >= linears
    calls.clear()
    train(tiny("bf16", epochs=1, amp="bf16", cpu_kernels="on"))
    assert calls == []


def test_seed_decides_the_run(tiny) -> None:
    """Initial weights, data order, dropout: a few steps show them all (each run stops with a checkpoint)."""
    a, b, c = (train(tiny(name, epochs=1, steps=3, seed=seed)) for name, seed in (("a", 1), ("b", 1), ("c", 2)))
    final = [load_safetensors(run.run_dir / "last.safetensors") for run in (a, b, c)]
    assert_same_weights(final[0], final[1])
    assert not torch.equal(final[0]["head.weight"], final[2]["head.weight"])


class _Stop(Exception):
    """Stops a run part-way, carrying what the test came for."""

    def __init__(self, value: object) -> None:
        super().__init__("stopped by the test")
        self.value = value


def first_training_batch(config: TrainConfig, monkeypatch: pytest.MonkeyPatch) -> torch.Tensor:
    """The images of a run's first training step, as the model receives them (augmented, mixed, normalised)."""
    forward = VisionTransformer.forward

    def capture(model: VisionTransformer, images: torch.Tensor) -> torch.Tensor:
        if model.training:
            raise _Stop(images.detach().clone())
        return forward(model, images)

    with monkeypatch.context() as patched, pytest.raises(_Stop) as caught:
        patched.setattr(VisionTransformer, "forward", capture)
        train(config)
    return caught.value.value


# Each flag against the same settings without it; the image folder's own default augmentation is turned off.
NO_AUGMENTATION = dict(crop_scale_min=1.0, hflip=0.0)
AFFINE, RANDAUGMENT = dict(affine_degrees=10.0), dict(auto_augment="randaugment")
FLAG_CHANGES = {
    "crop_scale_min": ({}, dict(crop_scale_min=0.6)),
    "hflip": ({}, dict(hflip=0.5)),
    "affine_degrees": ({}, AFFINE),
    "affine_translate": ({}, dict(affine_translate=0.1)),
    "affine_scale": ({}, dict(affine_scale=0.1)),
    "affine_interpolation": (AFFINE, {**AFFINE, "affine_interpolation": "nearest"}),
    "auto_augment=randaugment": ({}, RANDAUGMENT),
    "auto_augment=trivialaugment": ({}, dict(auto_augment="trivialaugment")),
    "randaugment_magnitude": (RANDAUGMENT, {**RANDAUGMENT, "randaugment_magnitude": 20}),
    "random_erasing": ({}, dict(random_erasing=0.5)),
    "mixup": ({}, dict(mixup=0.8)),
    "cutmix": ({}, dict(cutmix=1.0)),
}


@pytest.mark.parametrize("cache", ["on", "off"])  # whole-batch augmentation in memory; per-sample transforms
def test_each_augmentation_and_mixing_flag_changes_the_batches(
    tiny, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cache: str
) -> None:
    folder = write_digit_folder(tmp_path / "digits", classes=[3, 5, 8], per_class=16, size=12)
    batches: dict[tuple, torch.Tensor] = {}

    def batch(flags: dict) -> torch.Tensor:
        key = tuple(sorted(flags.items()))
        if key not in batches:
            config = tiny(f"run{len(batches)}", data_dir=str(folder), batch_size=16, cache=cache, patch_size=4,
                          auto_recipe=False, **{**NO_AUGMENTATION, **flags})  # fmt: skip
            batches[key] = first_training_batch(config, monkeypatch)
        return batches[key]

    unchanged = [name for name, (without, with_) in FLAG_CHANGES.items() if torch.equal(batch(without), batch(with_))]
    assert unchanged == []
    # A flip changes nothing but the direction: each image is the plain one or its mirror (up to the float error of
    # resampling the batch), and some are mirrors.
    plain, flipped = batch({}), batch(dict(hflip=0.5))
    mirrored = [torch.allclose(f, p.flip(-1), atol=1e-5) for p, f in zip(plain, flipped)]
    kept = [torch.allclose(f, p, atol=1e-5) for p, f in zip(plain, flipped)]
    assert all(m != k for m, k in zip(mirrored, kept)) and any(mirrored) and any(kept)


def test_label_smoothing_and_gradient_clipping_change_the_updates(tiny) -> None:
    """Neither touches the batches; both change the weights (clipping from the second AdamW step on: the first
    divides the gradient by its own size)."""

    def weights_after_two_steps(name: str, **flags: object) -> dict[str, torch.Tensor]:
        def stop(epoch: int, step: int, model: nn.Module) -> None:
            if step == 2:
                raise _Stop({k: v.clone() for k, v in model.state_dict().items()})

        with pytest.raises(_Stop) as caught:
            train(tiny(name, epochs=1, **DETERMINISTIC, **flags), on_step_end=stop)
        return caught.value.value

    plain = weights_after_two_steps("plain", label_smoothing=0.0, clip_grad=0.0)
    smoothed = weights_after_two_steps("smoothed", label_smoothing=0.2, clip_grad=0.0)
    clipped = weights_after_two_steps("clipped", label_smoothing=0.0, clip_grad=0.01)
    assert not torch.equal(plain["head.weight"], smoothed["head.weight"])
    assert not torch.equal(plain["head.weight"], clipped["head.weight"])


def test_image_folder_with_augmentation_and_mixing_flags(tiny, tmp_path: Path) -> None:
    folder = write_digit_folder(tmp_path / "digits", classes=[3, 5, 8], per_class=48, size=12)
    flags = dict(
        crop_scale_min=0.6, hflip=0.5, affine_degrees=5.0, affine_translate=0.1, affine_scale=0.1,
        affine_interpolation="nearest", auto_augment="randaugment", randaugment_magnitude=5, random_erasing=0.25,
        mixup=0.8, cutmix=1.0, label_smoothing=0.2, clip_grad=0.5, patch_size=4, val_fraction=0.2,
    )  # fmt: skip
    (folder / "val").rename(tmp_path / "unused-val")  # no val/: a seeded stratified split of train/
    config = tiny(data_dir=str(folder), batch_size=16, **flags)
    result = train(config)
    saved = load_train_config(result.run_dir)
    # The folder's recipe leaves every setting given alone, and a patch size given keeps the data's image size.
    assert saved.to_dict() == {**config.to_dict(), "model": "vit_digits_stem", "recipe": {}, "name": "run"}
    assert result.model.image_size == (12, 12) and result.model.patch_size == (4, 4)
    assert result.model.config.class_names == ["eight", "five", "three"]
    assert all(0 <= record["train_acc"] <= 1 for record in result.history)


def test_compile_runs_the_training_steps_through_torch_compile(tiny, monkeypatch: pytest.MonkeyPatch) -> None:
    """--compile: the training forward passes are traced by torch.compile (here into a backend that counts the
    calls and runs the traced graph eagerly: inductor's C++ build would take longer than the run) and the run
    trains as the eager one does."""
    calls: list[int] = []
    compile_ = torch.compile

    def counting_backend(graph: torch.fx.GraphModule, example_inputs: list) -> object:
        def run(*args: object) -> object:
            calls.append(1)
            return graph.forward(*args)

        return run

    monkeypatch.setattr(torch, "compile", lambda model, **options: compile_(model, backend=counting_backend))
    settings = dict(epochs=1, **DETERMINISTIC)
    compiled = train(tiny("compiled", compile=True, **settings))
    eager = train(tiny("eager", **settings))
    steps = compiled.history[-1]["step"]
    assert len(calls) >= steps  # at least one traced graph per forward pass of a step
    assert_same_weights(compiled.model.state_dict(), eager.model.state_dict(), atol=1e-5)
