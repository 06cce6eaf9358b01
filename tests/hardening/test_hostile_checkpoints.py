"""Checkpoints from strangers: a pickle that would run code is refused by every entry point, and wrong weights
(truncated, another architecture, a config.json that does not match) fail with an error naming the mismatch."""

from __future__ import annotations

import functools
import io
import pickle
from pathlib import Path

import pytest
import torch

from vitkit import VisionTransformer, cli
from vitkit.io import write_json
from vitkit.training import TrainConfig, load_run, train
from vitkit.training.checkpoint import LAST_STATE, LAST_WEIGHTS, save_checkpoint

TINY = dict(image_size=8, patch_size=4, in_channels=1, num_classes=10, hidden_dim=16, depth=1, num_heads=2, mlp_dim=32)


class Payload:
    """Unpickling this creates ``marker``: what a hostile checkpoint would do with ``os.system`` instead."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (open, (str(self.marker), "w"))


def hostile_bytes(marker: Path, *, zip_format: bool) -> bytes:
    """A state dict whose unpickling runs code: plain pickle, or torch.save's zip format."""
    obj = {"patch_embed.proj.weight": torch.zeros(1), "evil": Payload(marker)}
    if not zip_format:
        return pickle.dumps(obj)
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    marker = tmp_path / "code_ran.txt"
    for zip_format in (False, True):  # the payload is live: an unsafe loader really runs it
        data = hostile_bytes(marker, zip_format=zip_format)
        if zip_format:
            torch.load(io.BytesIO(data), weights_only=False)
        else:
            pickle.loads(data)
        assert marker.exists()
        marker.unlink()
    return marker


def saved_model(folder: Path, **changes: object) -> Path:
    torch.manual_seed(0)
    return VisionTransformer(**{**TINY, **changes}).save_pretrained(folder)


def tiny_train_config(out: Path, **changes: object) -> TrainConfig:
    return TrainConfig.from_dict(dict(hidden_dim=16, depth=1, num_heads=2, mlp_dim=32, epochs=1, batch_size=64,
                                      progress=False, tensorboard=False, out=str(out), **changes))  # fmt: skip


def refused(call, marker: Path, *words: str) -> None:
    with pytest.raises(ValueError) as info:
        call()
    assert all(word in str(info.value) for word in words), str(info.value)
    assert not marker.exists(), "the hostile pickle ran code"


def test_every_entry_point_refuses_a_pickle_that_would_run_code(marker: Path, tmp_path: Path, capsys) -> None:
    # from_pretrained: as model.safetensors, and as .bin/.pt/.pth (read with weights_only=True)
    weight_files = (("model.safetensors", False), ("model.safetensors", True), ("weights.bin", False),
                    ("weights.pt", True), ("weights.pth", False))  # fmt: skip
    for tried, (name, zip_format) in enumerate(weight_files):
        folder = saved_model(tmp_path / f"pretrained-{tried}")
        weights = folder / name
        weights.write_bytes(hostile_bytes(marker, zip_format=zip_format))
        refused(functools.partial(VisionTransformer.from_pretrained, weights), marker, str(weights))
    (folder / "model.safetensors").write_bytes(hostile_bytes(marker, zip_format=True))
    refused(lambda: VisionTransformer.from_pretrained(folder), marker, "not a readable safetensors")

    # A run folder: load_run of a finished run, an unfinished one's last.safetensors, and --resume (last_state.pt)
    run = tmp_path / "run"
    config = tiny_train_config(run, model="vit_digits")
    saved_model(run)
    write_json(config.to_dict(), run / "train_config.json")
    (run / "model.safetensors").write_bytes(hostile_bytes(marker, zip_format=False))
    refused(lambda: load_run(run), marker, "model.safetensors")
    (run / "model.safetensors").unlink()
    (run / LAST_WEIGHTS).write_bytes(hostile_bytes(marker, zip_format=True))
    refused(lambda: VisionTransformer.from_pretrained(run / LAST_WEIGHTS), marker, LAST_WEIGHTS)
    refused(lambda: train(config.replace(resume=str(run))), marker, LAST_WEIGHTS)
    weights = VisionTransformer.from_pretrained(saved_model(tmp_path / "good")).state_dict()
    save_checkpoint(run, weights, {"step": 0})
    (run / LAST_STATE).write_bytes(hostile_bytes(marker, zip_format=True))
    refused(lambda: train(config.replace(resume=str(run))), marker, "weights-only loader", "never code")

    # The web server
    from vitkit.serve.app import create_app

    refused(lambda: create_app(folder), marker, "not a readable safetensors")

    # The command line: train --init-from, predict, evaluate
    for name, zip_format in (("evil.safetensors", True), ("evil.bin", False)):
        evil = tmp_path / name
        evil.write_bytes(hostile_bytes(marker, zip_format=zip_format))
        code = cli.main(["train", "--init-from", str(evil), "--out", str(tmp_path / "finetune"), "--epochs", "1"])
        assert code == 2 and str(evil) in capsys.readouterr().err and not marker.exists()
    hostile_run = saved_model(tmp_path / "hostile_run")
    (hostile_run / "model.safetensors").write_bytes(hostile_bytes(marker, zip_format=True))
    for argv in (["predict", str(hostile_run), str(tmp_path)], ["evaluate", str(hostile_run), "--data-dir", str(run)]):
        code = cli.main(argv)
        err = capsys.readouterr().err
        assert code == 2 and "model.safetensors is not a readable safetensors" in err, err
        assert len(err.splitlines()) == 1 and not marker.exists()


def test_wrong_weights_fail_naming_the_mismatch(tmp_path: Path, capsys) -> None:
    truncated = saved_model(tmp_path / "truncated")
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ValueError, match=f"{weights} is not a readable safetensors weights file"):
        VisionTransformer.from_pretrained(truncated)
    assert cli.main(["predict", str(truncated), str(tmp_path)]) == 2
    assert "is not a readable safetensors" in capsys.readouterr().err

    deeper = saved_model(tmp_path / "deeper", depth=2)  # another architecture: two blocks, config says one
    write_json({"model_type": "vitkit", **VisionTransformer(**TINY).config.to_dict()}, deeper / "config.json")
    with pytest.raises(
        ValueError, match=r"does not fit the model .*config.json describes.*unexpected keys:? \['blocks.1"
    ):
        VisionTransformer.from_pretrained(deeper)

    wider = saved_model(tmp_path / "wider", hidden_dim=32)  # config.json says hidden_dim 16
    write_json({"model_type": "vitkit", **VisionTransformer(**TINY).config.to_dict()}, wider / "config.json")
    with pytest.raises(ValueError, match=r"cls_token: weights \(1, 1, 32\) vs model \(1, 1, 16\)"):
        VisionTransformer.from_pretrained(wider)
    assert cli.main(["predict", str(wider), str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "does not fit the model" in err and "Traceback" not in err

    torch.save({"not": "tensors"}, tmp_path / "wider" / "plain.pt")
    with pytest.raises(ValueError, match="holds no state dict"):
        VisionTransformer.from_pretrained(tmp_path / "wider" / "plain.pt")


def test_vitkit_convert_refuses_hostile_checkpoints_of_every_library(marker: Path, tmp_path: Path, capsys) -> None:
    import numpy as np

    evil_pth, evil_bin, evil_npz = tmp_path / "evil.pth", tmp_path / "evil.bin", tmp_path / "evil.npz"
    evil_pth.write_bytes(hostile_bytes(marker, zip_format=True))
    evil_bin.write_bytes(hostile_bytes(marker, zip_format=False))
    np.savez(evil_npz, **{"embedding/kernel": np.array([Payload(marker)], dtype=object)})  # pickled inside the .npy
    transformers_dir = tmp_path / "hf"
    transformers_dir.mkdir()
    write_json({"model_type": "vit", "architectures": ["ViTForImageClassification"], "hidden_size": 16,
                "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32, "image_size": 8,
                "patch_size": 4, "num_channels": 1}, transformers_dir / "config.json")  # fmt: skip
    (transformers_dir / "pytorch_model.bin").write_bytes(hostile_bytes(marker, zip_format=True))
    cases = [
        [evil_pth, "--from", "timm", "--model", "vit_tiny_patch16_224"],
        [evil_bin, "--from", "timm", "--model", "vit_tiny_patch16_224"],
        [evil_pth, "--from", "torchvision", "--model", "vit_b_16"],
        [evil_npz, "--from", "jax", "--model", "vit_tiny_patch16_224"],
        [transformers_dir, "--from", "transformers"],
    ]
    for case in cases:
        code = cli.main(["convert", *map(str, case), "--out", str(tmp_path / "converted")])
        err = capsys.readouterr().err
        errors = [line for line in err.splitlines() if "vitkit: error" in line]  # peers may log warnings too
        assert code == 2 and len(errors) == 1 and errors[0].startswith("vitkit: error: "), err
        assert not marker.exists(), f"converting {case} ran the hostile pickle"
        assert not (tmp_path / "converted" / "model.safetensors").exists()
