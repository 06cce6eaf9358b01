"""`vitkit convert` and `vitkit export` end to end, and the fine-tuning path: random peer model saved to disk ->
convert -> predict -> train --init-from on a tiny folder -> evaluate."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import transformers
from interop_helpers import TOLERANCE, max_logit_difference, random_images, randomise, write_original_npz
from PIL import Image
from safetensors.torch import save_file

from vitkit import VisionTransformer, cli


def run_cli(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    code = cli.main([str(arg) for arg in argv])
    out, err = capsys.readouterr()
    return code, out, err


def photo(path: Path, seed: int, size: tuple[int, int] = (60, 45)) -> Path:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0 : size[1], 0 : size[0]]
    base = rng.integers(0, 255, 3)
    pixels = (base + np.stack([x * 3, y * 4, (x + y) * 2], -1) * rng.uniform(0.5, 2)) % 256
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.astype(np.uint8)).save(path)
    return path


def test_convert_a_timm_file_then_predict_gives_timms_predictions(tmp_path: Path, capsys) -> None:
    from timm.data import create_transform

    peer = randomise(timm.create_model("test_vit", pretrained=False, img_size=32, num_classes=3))
    save_file(peer.state_dict(), tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps({"architecture": "test_vit", "pretrained_cfg": {
        "interpolation": "bicubic", "crop_pct": 0.9, "crop_mode": "center",
        "mean": [0.5] * 3, "std": [0.5] * 3}}))  # fmt: skip
    # Without --model the architecture comes from timm's config.json beside the file, as the hub ships it.
    code, out, err = run_cli(
        capsys, "convert", tmp_path / "model.safetensors", "--from", "timm", "--out", tmp_path / "run"
    )
    assert code == 0, err
    assert "bicubic resize, crop_pct 0.9" in out
    image = photo(tmp_path / "photo.png", seed=0)
    code, out, _ = run_cli(capsys, "predict", tmp_path / "run", image, "--top-k", "3", "--device", "cpu")
    ours = {entry["class"]: entry["probability"] for entry in json.loads(out)["top_k"]}
    transform = create_transform(32, interpolation="bicubic", crop_pct=0.9, mean=(0.5,) * 3, std=(0.5,) * 3)
    with torch.no_grad():
        theirs = peer(transform(Image.open(image).convert("RGB"))[None]).softmax(dim=1)[0]
    for index, probability in enumerate(theirs.tolist()):
        assert ours[str(index)] == pytest.approx(probability, abs=1e-5)


def test_convert_torchvision_and_jax_files(tmp_path: Path, capsys) -> None:
    from torchvision.models.vision_transformer import VisionTransformer as TorchvisionViT

    peer = randomise(TorchvisionViT(image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=32, mlp_dim=64,
                                    num_classes=4))  # fmt: skip
    torch.save({"model": peer.state_dict()}, tmp_path / "vit.pth")  # a training checkpoint that wraps its weights
    code, _, err = run_cli(capsys, "convert", tmp_path / "vit.pth", "--from", "torchvision", "--out", tmp_path / "tv")
    assert code == 2 and "needs name=" in err
    code, _, _ = run_cli(capsys, "convert", tmp_path / "vit.pth", "--from", "torchvision", "--model", "vit_b_16",
                         "--out", tmp_path / "tv")  # fmt: skip
    assert code == 2  # vit_b_16 is not this file's architecture
    code, _, err = run_cli(capsys, "convert", tmp_path / "vit.pth", "--from", "timm", "--model", "vit_tiny_patch16_224",
                           "--out", tmp_path / "tv")  # fmt: skip
    assert code == 2 and "missing keys" in err and "unexpected keys" in err and "conv_proj.weight" in err
    data = (tmp_path / "vit.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 3])
    code, _, err = run_cli(capsys, "convert", tmp_path / "cut.pth", "--from", "torchvision", "--out", tmp_path / "x")
    assert code == 2 and "cut.pth is not a readable PyTorch weights file" in err
    known = randomise(VisionTransformer(image_size=32, patch_size=8, hidden_dim=32, depth=2, num_heads=4, mlp_dim=64,
                                        num_classes=4))  # fmt: skip
    write_original_npz(known, tmp_path / "vit.npz")
    code, _, _ = run_cli(capsys, "convert", tmp_path / "vit.npz", "--from", "jax", "--out", tmp_path / "jax")
    assert code == 0
    images = random_images(2, 32, 32)
    assert max_logit_difference(VisionTransformer.from_pretrained(tmp_path / "jax"), known, images) <= TOLERANCE


def test_export_onnx_at_a_fixed_size_with_mean_pooling_and_fc_norm(tmp_path: Path) -> None:
    from vitkit.interop.export import check_onnx, export_onnx

    torch.manual_seed(0)
    model = randomise(VisionTransformer(image_size=(16, 24), patch_size=8, hidden_dim=32, depth=2, num_heads=4,
                                        mlp_dim=64, num_classes=3, class_token=False, pool="mean",
                                        fc_norm=True))  # fmt: skip
    differences = check_onnx(model, export_onnx(model, tmp_path / "vit.onnx"))
    assert set(differences) == {"batch 1", "batch 5"} and max(differences.values()) <= 1e-4


def test_export_transformers_and_timm(tmp_path: Path, capsys) -> None:
    torch.manual_seed(0)
    model = randomise(VisionTransformer(image_size=(16, 24), patch_size=8, hidden_dim=32, depth=2, num_heads=4,
                                        mlp_dim=64, num_classes=3, layer_norm_eps=1e-12,
                                        class_names=["a", "b", "c"]))  # fmt: skip
    model.save_pretrained(tmp_path / "run")
    images = random_images(2, 16, 24)
    code, _, _ = run_cli(capsys, "export", tmp_path / "run", "--format", "transformers", "--out", tmp_path / "hf")
    assert code == 0
    peer = transformers.ViTForImageClassification.from_pretrained(tmp_path / "hf")
    assert peer.config.id2label == {0: "a", 1: "b", 2: "c"}
    assert max_logit_difference(peer, model, images) <= TOLERANCE
    code, out, _ = run_cli(capsys, "export", tmp_path / "run", "--format", "timm", "--out", tmp_path / "timm.pth")
    assert code == 0
    call = re.search(r"model = (timm\.create_model\(.*\))", out).group(1)
    import functools  # noqa: F401  (the printed call uses it)

    peer = eval(call)
    peer.load_state_dict(torch.load(tmp_path / "timm.pth", weights_only=True))
    assert max_logit_difference(peer, model, images) <= TOLERANCE


def test_fine_tune_a_converted_transformers_checkpoint(tmp_path: Path, capsys) -> None:
    config = transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
                                    num_attention_heads=4, intermediate_size=64, num_labels=10)  # fmt: skip
    randomise(transformers.ViTForImageClassification(config)).save_pretrained(tmp_path / "hf")
    code, _, _ = run_cli(capsys, "convert", tmp_path / "hf", "--from", "transformers", "--out", tmp_path / "base")
    assert code == 0
    for split, count in (("train", 12), ("val", 4)):
        for label in ("red", "green"):
            for i in range(count):
                photo(
                    tmp_path / "photos" / split / label / f"{i}.png", seed=hash((split, label, i)) % 1000, size=(40, 40)
                )
    code, out, err = run_cli(capsys, "train", "--data-dir", tmp_path / "photos", "--init-from", tmp_path / "base",
                             "--image-size", "48", "--epochs", "2", "--batch-size", "8", "--no-tensorboard",
                             "--no-progress", "--out", tmp_path / "tuned")  # fmt: skip
    assert code == 0, err
    tuned = VisionTransformer.from_pretrained(tmp_path / "tuned")
    base = VisionTransformer.from_pretrained(tmp_path / "base")
    assert tuned.num_classes == 2 and tuned.image_size == (48, 48) and tuned.pos_embed.shape == (1, 1 + 36, 32)
    assert (tuned.config.hidden_dim, tuned.config.depth, tuned.config.layer_norm_eps) == (32, 2, 1e-12)
    assert not torch.equal(tuned.blocks[0].attn.q.weight, base.blocks[0].attn.q.weight)  # it trained
    code, out, _ = run_cli(capsys, "evaluate", tmp_path / "tuned", "--data-dir", tmp_path / "photos", "--json",
                           "--device", "cpu")  # fmt: skip
    assert code == 0 and json.loads(out)["num_samples"] == 8


def test_a_converted_imagenet_timm_model_names_its_classes_and_fine_tunes_keeping_its_preprocessing(
    tmp_path: Path, capsys, caplog, monkeypatch
) -> None:
    import logging

    monkeypatch.setattr("vitkit.explain.report.write_run_pictures", lambda *args, **kwargs: None)  # tests/explain's
    peer = randomise(timm.create_model("test_vit", pretrained=False, img_size=32, num_classes=1000))
    save_file(peer.state_dict(), tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps({"architecture": "test_vit", "pretrained_cfg": {
        "interpolation": "bicubic", "crop_pct": 0.9, "crop_mode": "center",
        "mean": [0.5] * 3, "std": [0.5] * 3}}))  # fmt: skip
    code, out, err = run_cli(capsys, "convert", tmp_path / "model.safetensors", "--from", "timm", "--out",
                             tmp_path / "in1k")  # fmt: skip
    assert code == 0, err
    names = json.loads((tmp_path / "in1k" / "config.json").read_text())["class_names"]
    assert names[:2] == ["tench, Tinca tinca", "goldfish, Carassius auratus"] and len(names) == 1000
    image = photo(tmp_path / "photo.png", seed=0)
    code, out, _ = run_cli(capsys, "predict", tmp_path / "in1k", image, "--top-k", "1", "--device", "cpu")
    from timm.data import create_transform

    transform = create_transform(32, interpolation="bicubic", crop_pct=0.9, mean=(0.5,) * 3, std=(0.5,) * 3)
    with torch.no_grad():
        best = int(peer(transform(Image.open(image).convert("RGB"))[None]).argmax())
    assert json.loads(out)["top_k"][0]["class"] == names[best]
    # Fine-tuning it on a folder of two classes keeps what the weights expect and says how it trains.
    for label in ("red", "green"):
        for i in range(10):
            photo(tmp_path / "photos" / "train" / label / f"{i}.png", seed=hash((label, i)) % 1000, size=(40, 30))
    caplog.set_level(logging.INFO)
    code, _, err = run_cli(capsys, "train", "--data-dir", tmp_path / "photos", "--init-from", tmp_path / "in1k",
                           "--epochs", "1", "--batch-size", "6", "--no-tensorboard", "--no-progress",
                           "--out", tmp_path / "tuned")  # fmt: skip
    assert code == 0, err
    assert "lr 0.0001 (default" in caplog.text
    tuned = json.loads((tmp_path / "tuned" / "config.json").read_text())
    assert (tuned["mean"], tuned["std"]) == ([0.5] * 3, [0.5] * 3)
    assert (tuned["interpolation"], tuned["crop_pct"], tuned["image_size"]) == ("bicubic", 0.9, [32, 32])
    assert tuned["class_names"] == ["green", "red"]
    recorded = json.loads((tmp_path / "tuned" / "train_config.json").read_text())
    assert recorded["lr"] == 1e-4 and recorded["image_size"] == [32, 32]
    architecture = {"hidden_dim": 64, "depth": 6, "num_heads": 2, "mlp_dim": 192, "patch_size": [16, 16]}
    assert {key: recorded["vit"][key] for key in architecture} == architecture  # timm's test_vit
