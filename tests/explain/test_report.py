"""`vitkit explain` and the run pictures: valid PNGs of sensible size, and an index.html that shows them all."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch.utils.data import TensorDataset

from vitkit import VisionTransformer
from vitkit.cli import main
from vitkit.explain.report import explain_images, write_run_pictures
from vitkit.io import write_json
from vitkit.training.config import TRAIN_CONFIG_FILE, TrainConfig


def assert_valid_pngs(folder: Path) -> list[Path]:
    pngs = sorted(folder.glob("*.png"))
    for png in pngs:
        with Image.open(png) as image:
            image.verify()  # a complete, uncorrupted file
        with Image.open(png) as image:
            assert image.format == "PNG"
            width, height = image.size
            assert 300 <= width <= 2000 and 300 <= height <= 2000, f"{png.name} is {width}x{height}"
            assert len(image.getcolors(1 << 20) or range(1 << 20)) > 20, f"{png.name} is (nearly) blank"
    return pngs


def assert_index_shows_all(folder: Path, pngs: list[Path]) -> str:
    index = (folder / "index.html").read_text(encoding="utf-8")
    shown = re.findall(r'<img src="([^"]+)"', index)
    assert sorted(shown) == sorted(png.name for png in pngs)
    return index


@pytest.fixture
def digit_run(digits_and_model, tmp_path: Path) -> tuple[Path, list[Path]]:
    """The trained digits model saved as a run folder, and two held-out digits as PNG files."""
    digits, model, _ = digits_and_model
    run = model.save_pretrained(tmp_path / "run")
    files = []
    for i in range(2):
        path = tmp_path / f"digit {i} ({int(digits.labels[i])}).png"
        Image.fromarray((digits.pixels[i, 0] * 255).round().byte().numpy(), "L").save(path)
        files.append(path)
    return run, files


def test_explain_writes_every_picture_and_an_index(digit_run, tmp_path: Path, capsys) -> None:
    run, files = digit_run
    out = tmp_path / "explained"
    assert main(["explain", str(run), *map(str, files), "--out", str(out), "--head-fusion", "max",
                 "--discard-ratio", "0.2", "--target", "3", "--filters", "4"]) == 0  # fmt: skip
    assert str(out / "index.html") in capsys.readouterr().out
    pngs = assert_valid_pngs(out)
    per_image = ("patch-grid", "rollout", "grad-cam", "attribution", "heads")
    expected = {f"{i:02d}-digit_{i}_{int(f.stem[-2])}_-{kind}.png" for i, f in enumerate(files) for kind in per_image}
    expected |= {"position-similarity.png", "attention-distance.png", "embedding-filters.png"}
    assert {png.name for png in pngs} == expected
    index = assert_index_shows_all(out, pngs)
    assert "Grad-CAM for class 3" in index and "heads fused by max, weakest 20% discarded" in index
    assert "transformer attribution for class 3" in index and "faithfulness" not in index.lower()


def test_explain_scores_the_maps_of_the_runs_held_out_split(digits_and_model, tmp_path: Path, capsys) -> None:
    """Without image files, --faithfulness reads the run's held-out split from train_config.json and writes the
    scores of every map and of the random order, as a figure, a table in index.html and faithfulness.json."""
    _, model, _ = digits_and_model
    run = model.save_pretrained(tmp_path / "run")
    settings = TrainConfig(dataset="digits", image_size=12, val_fraction=0.05, seed=0).to_dict()
    write_json(settings, run / TRAIN_CONFIG_FILE)
    out = tmp_path / "scored"
    assert main(["explain", str(run), "--faithfulness", "--max-images", "12", "--steps", "4", "--baseline", "mean",
                 "--out", str(out)]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "faithfulness on 12 images" in printed and "random order" in printed
    pngs = assert_valid_pngs(out)
    assert "faithfulness.png" in {png.name for png in pngs}
    assert len([png for png in pngs if png.name.endswith("-rollout.png")]) == 3  # the first held-out images drawn
    index = assert_index_shows_all(out, pngs)
    scores = json.loads((out / "faithfulness.json").read_text())
    assert scores["images"] == 12 and scores["steps"] == 4 and scores["baseline"] == "mean"
    methods = [
        "last-block attention",
        "attention rollout",
        "Grad-CAM",
        "transformer attribution",
        "patch contrast (model-free)",
        "random order",
    ]
    assert list(scores["methods"]) == methods
    for name, areas in scores["methods"].items():
        assert 0.0 <= areas["deletion_auc"] <= 1.0 and 0.0 <= areas["insertion_auc"] <= 1.0
        assert f"<td>{name}</td><td>{areas['deletion_auc']:.3f}</td><td>{areas['insertion_auc']:.3f}</td>" in index
    (run / TRAIN_CONFIG_FILE).unlink()
    assert main(["explain", str(run), "--faithfulness", "--out", str(out)]) == 2
    assert "has no train_config.json" in capsys.readouterr().err


def test_explain_rejects_bad_input_with_a_clear_error(digit_run, tmp_path: Path, capsys) -> None:
    run, files = digit_run
    out = str(tmp_path / "out")
    assert main(["explain", str(run), str(tmp_path / "missing.png"), "--out", out]) == 2
    assert "missing.png" in capsys.readouterr().err
    assert main(["explain", str(run), str(files[0]), "--out", out, "--target", "eleven"]) == 2
    assert "'eleven' is not one of the model's classes" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["explain", str(run), str(files[0]), "--out", out, "--discard-ratio", "1"])


def test_models_without_a_cls_token_are_explained_from_the_mean_of_their_patches(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = VisionTransformer(image_size=(16, 24), patch_size=4, in_channels=3, num_classes=4, hidden_dim=16,
                              depth=2, num_heads=4, mlp_dim=32, pool="mean", class_token=False)  # fmt: skip
    index = explain_images(model, torch.rand(1, 3, 16, 24), ["a.jpg"], tmp_path)
    assert index == tmp_path / "index.html"
    html = assert_index_shows_all(tmp_path, assert_valid_pngs(tmp_path))
    assert "from the mean of the patch tokens" in html


def test_run_pictures_are_written_and_a_failure_never_raises(digits_and_model, tmp_path: Path, caplog) -> None:
    digits, model, _ = digits_and_model
    validation = TensorDataset(digits.images, digits.labels)
    index = write_run_pictures(model, validation, tmp_path / "explain", count=2)
    pngs = assert_valid_pngs(tmp_path / "explain")
    assert [png.name for png in pngs] == ["00-patch-grid.png", "00-rollout.png", "01-patch-grid.png", "01-rollout.png"]
    assert index is not None and assert_index_shows_all(tmp_path / "explain", pngs)
    with caplog.at_level(logging.WARNING):
        wrong_size = TensorDataset(torch.zeros(2, 1, 5, 5), torch.zeros(2))
        assert write_run_pictures(model, wrong_size, tmp_path / "broken") is None
    assert "could not draw" in caplog.text
