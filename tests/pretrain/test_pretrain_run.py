"""`vitkit pretrain`: a masked-autoencoder run folder whose encoder `vitkit train --init-from` fine-tunes, and that
resumes exactly with its loss plot and a picture of reconstructions."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from vitkit import cli
from vitkit.io import load_safetensors, read_json
from vitkit.pretrain.run import pretrain
from vitkit.training import TrainConfig, train
from vitkit.training.checkpoint import load_checkpoint
from vitkit.training.metrics import read_metrics

QUIET = dict(progress=False, tensorboard=False, warmup_epochs=0.0, batch_size=64)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(a 2-epoch pre-training run, the same run stopped mid second epoch by --steps and resumed), through the
    command line; only the resumed run draws its pictures (drawing is most of a tiny run's time)."""
    root = tmp_path_factory.mktemp("pretrain")
    reference, stopped = root / "reference", root / "stopped"
    # Random masks, stochastic depth and augmentation all draw from the streams the checkpoint keeps.
    tiny = ["--epochs", "2", "--batch-size", "64", "--hidden-dim", "32", "--depth", "2", "--num-heads", "2",
            "--mlp-dim", "64", "--patch-size", "2", "--conv-stem", "0", "--drop-path", "0.1", "--warmup-epochs", "0.5",
            "--no-progress", "--no-tensorboard", "--mask-ratio", "0.5", "--decoder-dim", "16", "--decoder-depth", "1",
            "--decoder-heads", "2", "--no-norm-pix-loss"]  # fmt: skip
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("vitkit.explain.report.write_reconstructions", lambda *args, **kwargs: None)
        patch.setattr("vitkit.training.metrics.MetricsLog._plot", lambda *args: None)
        assert cli.main(["pretrain", *tiny, "--out", str(reference)]) == 0
        assert cli.main(["pretrain", *tiny, "--steps", "30", "--out", str(stopped)]) == 0  # mid second epoch
    assert not (stopped / "model.safetensors").exists()
    # The run's own MAE settings unless told otherwise; other ones would make another run.
    assert cli.main(["pretrain", "--resume", str(stopped), "--mask-ratio", "0.75"]) == 2
    assert cli.main(["pretrain", "--resume", str(stopped), "--steps", "0"]) == 0
    return reference, stopped


def test_a_stopped_run_resumes_bit_for_bit_and_draws_its_loss_and_reconstructions(runs: tuple[Path, Path]) -> None:
    reference, resumed = runs
    for name in ("model.safetensors", "last.safetensors"):
        expected, got = load_safetensors(reference / name), load_safetensors(resumed / name)
        assert expected.keys() == got.keys()
        assert all(torch.equal(expected[key], got[key]) for key in expected), name
    timeless = [[{k: v for k, v in r.items() if k not in ("images_per_s", "epoch_time_s")} for r in read_metrics(run)]
                for run in runs]  # fmt: skip
    assert timeless[0] == timeless[1] and [r["epoch"] for r in timeless[0]] == [1, 2]
    record = read_json(resumed / "pretrain.json")
    assert record["mae"]["mask_ratio"] == 0.5 and [r["epoch"] for r in record["history"]] == [1, 2]
    assert record["mae"]["norm_pix_loss"] is False  # the flag's, kept by --resume
    assert 0 < record["history"][-1]["val_loss"] < 2  # (learning is tested in test_mae)
    for picture in ("loss.png", "lr.png", "reconstructions.png"):
        assert Image.open(resumed / picture).size[0] > 100, picture
    assert not (resumed / "accuracy.png").exists()  # no labels, no accuracy


def test_a_pretrained_encoder_is_fine_tuned_from_its_run_folder(
    runs: tuple[Path, Path], tmp_path: Path, monkeypatch
) -> None:
    # The run's pictures and plots (tested in tests/training) are most of a tiny run's time.
    monkeypatch.setattr("vitkit.explain.report.write_run_pictures", lambda *args: None)
    monkeypatch.setattr("vitkit.training.metrics.MetricsLog._plot", lambda *args: None)
    run_dir = runs[0]
    encoder = load_safetensors(run_dir / "model.safetensors")
    assert not any(key.startswith("decoder") or key == "mask_token" for key in encoder)
    # lr so small that the fine-tuned encoder is still the pre-trained one, up to 1e-6.
    config = TrainConfig.from_dict(dict(QUIET, init_from=str(run_dir), lr=1e-9, min_lr=0.0, weight_decay=0.0,
                                        epochs=1, ema_decay=0.0, out=str(tmp_path / "tuned")))  # fmt: skip
    tuned = train(config).model.state_dict()
    for key in ("patch_embed.proj.weight", "blocks.1.attn.q.weight", "norm.weight"):
        torch.testing.assert_close(tuned[key], encoder[key], atol=1e-6, rtol=0)


def test_classification_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="pretraining takes no label_smoothing, mixup"):
        pretrain(TrainConfig.from_dict(dict(QUIET, label_smoothing=0.2, mixup=0.5)))
    with pytest.raises(ValueError, match="pretraining does not implement compile, ema_decay"):
        pretrain(TrainConfig.from_dict(dict(QUIET, compile=True, ema_decay=0.9)))


def write_digits_folder(root: Path, per_class: int, val_per_class: int) -> Path:
    """An image folder of the real 8x8 digits 0, 1 and 2: ``per_class`` training and ``val_per_class`` validation
    images of each."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    for label in range(3):
        images = digits.images[digits.target == label]
        for i, pixels in enumerate(images[: per_class + val_per_class]):
            path = root / ("train" if i < per_class else "val") / str(label) / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray((pixels * 255 / 16).astype("uint8"), "L").save(path)
    return root


def test_two_processes_pretrain_the_weights_one_process_does(tmp_path: Path, monkeypatch) -> None:
    """`vitkit pretrain --nproc 2` (torchrun, DDP) computes the steps of one process: the same batches, masks and
    mean gradients; 3 steps of 2 micro-batches, over an epoch's end (66 training images, 15 validation images,
    which 2 processes share unevenly)."""
    data = write_digits_folder(tmp_path / "data", per_class=22, val_per_class=5)
    argv = ["pretrain", "--data-dir", str(data), "--epochs", "2", "--steps", "3", "--batch-size", "16",
            "--accum-steps", "2", "--hidden-dim", "32", "--depth", "2", "--num-heads", "2", "--mlp-dim", "64",
            "--patch-size", "2", "--conv-stem", "0", "--drop-path", "0", "--warmup-epochs", "0.5", "--no-progress",
            "--no-tensorboard", "--mask-ratio", "0.5", "--decoder-dim", "16", "--decoder-depth", "1",
            "--decoder-heads", "2", "--no-norm-pix-loss"]  # fmt: skip
    two, one = tmp_path / "two", tmp_path / "one"
    command = [sys.executable, "-m", "vitkit", *argv, "--nproc", "2", "--out", str(two)]
    launched = subprocess.Popen(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, start_new_session=True)
    try:
        monkeypatch.setattr("vitkit.training.metrics.MetricsLog._plot", lambda *args: None)
        assert cli.main([*argv, "--out", str(one)]) == 0  # while the two processes start
        assert launched.wait(timeout=120) == 0
    finally:
        os.killpg(launched.pid, signal.SIGKILL) if launched.poll() is None else None
    (expected, expected_state), (got, got_state) = load_checkpoint(one), load_checkpoint(two)
    assert expected_state["step"] == got_state["step"] == 3 and expected.keys() == got.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], atol=1e-5, rtol=0, msg=key)
    [first], [second] = expected_state["history"], got_state["history"]
    for key in ("train_loss", "val_loss"):
        assert second[key] == pytest.approx(first[key], abs=1e-5), key
    assert len(got_state["rng"]) == 2  # each process's random stream, to resume with
