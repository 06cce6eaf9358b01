"""`vitkit pretrain`: a masked-autoencoder run folder whose encoder `vitkit train --init-from` fine-tunes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vitkit import cli
from vitkit.io import load_safetensors, read_json
from vitkit.pretrain.run import pretrain
from vitkit.training import TrainConfig, train

QUIET = dict(progress=False, tensorboard=False, warmup_epochs=0.0, batch_size=64)


def test_a_pretrained_encoder_is_fine_tuned_from_its_run_folder(tmp_path: Path, one_thread: None, monkeypatch) -> None:
    # The run's pictures and plots (tested in tests/training) are most of a tiny run's time.
    monkeypatch.setattr("vitkit.explain.report.write_run_pictures", lambda *args: None)
    monkeypatch.setattr("vitkit.training.metrics.MetricsLog._plot", lambda *args: None)
    run_dir = tmp_path / "mae"
    flags = ["--epochs", "1", "--batch-size", "64", "--hidden-dim", "32", "--depth", "2", "--num-heads", "2",
             "--mlp-dim", "64", "--patch-size", "2", "--conv-stem", "0", "--warmup-epochs", "0", "--no-progress",
             "--no-tensorboard", "--decoder-dim", "16", "--decoder-depth", "1", "--decoder-heads", "2"]  # fmt: skip
    assert cli.main(["pretrain", *flags, "--mask-ratio", "0.5", "--out", str(run_dir)]) == 0
    record = read_json(run_dir / "pretrain.json")
    assert record["mae"]["mask_ratio"] == 0.5 and [r["epoch"] for r in record["history"]] == [1]
    assert 0 < record["history"][0]["val_loss"] < 2  # (learning is tested in test_mae)
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
