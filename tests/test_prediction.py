"""vitkit.prediction: any image mode and size in, one result per file out, bad files reported not raised."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vitkit import VisionTransformer
from vitkit.prediction import expand_paths, predict_files

CLASS_NAMES = ["zero", "one", "two", "three"]


@pytest.fixture
def tiny_model(tiny_classifier) -> Callable[..., VisionTransformer]:
    """tiny_model(channels, **overrides): the shared tiny classifier with this module's classes and statistics."""

    def make(channels: int, **overrides: object) -> VisionTransformer:
        options = {"mean": (0.4,) * channels, "std": (0.2,) * channels, **overrides}
        return tiny_classifier(CLASS_NAMES, channels, **options)

    return make


def write_image(path: Path, mode: str, size: tuple[int, int], seed: int = 0) -> Path:
    """A random image of PIL `mode` and (width, height) `size`; the suffix picks the format."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 4), dtype=np.uint8)
    image = Image.fromarray(pixels, "RGBA")
    image = image.convert("RGB").quantize(8) if mode == "P" else image.convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


@pytest.fixture
def images(tmp_path: Path) -> dict[str, Path]:
    """A folder of good images of every kind, plus a truncated PNG, a text file and a hidden file."""
    folder = tmp_path / "images"
    good = {
        "gray": write_image(folder / "a_gray.png", "L", (8, 8), 1),
        "rgba": write_image(folder / "b_rgba.png", "RGBA", (30, 20), 2),
        "palette": write_image(folder / "c_palette.png", "P", (16, 16), 3),
        "big": write_image(folder / "sub" / "d_big.jpg", "RGB", (640, 480), 4),
    }
    truncated = folder / "e_truncated.png"
    truncated.write_bytes(write_image(tmp_path / "whole.png", "RGB", (64, 64), 5).read_bytes()[:200])
    (folder / "notes.txt").write_text("not an image")
    write_image(folder / ".hidden.png", "L", (8, 8), 6)
    return {**good, "truncated": truncated, "text": folder / "notes.txt", "folder": folder}


def test_expand_paths_recurses_sorted_and_reports_bad_paths(tmp_path: Path, images: dict[str, Path]) -> None:
    (tmp_path / "empty").mkdir()
    expanded = list(expand_paths([images["folder"], images["text"], tmp_path / "missing.png", tmp_path / "empty"]))
    files = [path for path, error in expanded if error is None]
    assert files == [
        images["gray"],
        images["rgba"],
        images["palette"],
        images["truncated"],
        images["big"],
        images["text"],
    ], "a folder gives its image files sorted (hidden and non-image files skipped); a named file is always tried"
    errors = {path: error for path, error in expanded if error is not None}
    assert "no such file or folder" in errors[tmp_path / "missing.png"]
    assert "no image files found" in errors[tmp_path / "empty"]


@pytest.mark.parametrize("channels", [1, 3])
def test_predict_any_mode_and_size_and_report_bad_files(
    channels: int, images: dict[str, Path], tmp_path: Path, tiny_model: Callable[..., VisionTransformer]
) -> None:
    model = tiny_model(channels)
    results = list(predict_files(model, [images["folder"], images["text"], tmp_path / "missing.png"], top_k=3))

    by_path = {Path(r["path"]): r for r in results}
    assert len(results) == len(by_path) == 7
    for name in ("gray", "rgba", "palette", "big"):
        top = by_path[images[name]]["top_k"]
        assert [set(entry) for entry in top] == [{"class", "probability"}] * 3
        probabilities = [entry["probability"] for entry in top]
        assert probabilities == sorted(probabilities, reverse=True)
        assert 0 < sum(probabilities) <= 1 + 1e-5
        assert {entry["class"] for entry in top} <= set(CLASS_NAMES)
    for name in ("truncated", "text"):
        result = by_path[images[name]]
        assert set(result) == {"path", "error"}
        assert str(images[name]) in result["error"] and "expected a readable image" in result["error"]
    assert "no such file" in by_path[tmp_path / "missing.png"]["error"]


def test_probabilities_are_the_models_softmax_whatever_the_batching(
    images: dict[str, Path], tiny_model: Callable[..., VisionTransformer]
) -> None:
    model = tiny_model(3)
    paths = [images["rgba"], images["truncated"], images["big"], images["gray"]]
    small_batches = list(predict_files(model, paths, top_k=10, batch_size=1))
    assert small_batches == list(predict_files(model, paths, top_k=10, batch_size=64))

    # The expected preprocessing is timm's eval transform on the model's settings (resize the shorter side, centre
    # crop, normalise); a greyscale file becomes RGB as PIL converts it.
    from timm.data import create_transform

    config = model.config
    timm_transform = create_transform(
        config.image_size,
        interpolation=config.interpolation,
        crop_pct=config.crop_pct,
        mean=config.mean,
        std=config.std,
    )
    for position, name in ((2, "big"), (3, "gray")):
        with Image.open(images[name]) as image, torch.no_grad():
            expected = model.eval()(timm_transform(image.convert("RGB"))[None]).softmax(dim=1)[0]
        top = small_batches[position]["top_k"]
        assert len(top) == len(CLASS_NAMES), "top_k is capped at the number of classes"
        for entry in top:
            assert entry["probability"] == pytest.approx(expected[CLASS_NAMES.index(entry["class"])].item(), abs=1e-6)


def test_model_without_class_names_or_statistics(
    images: dict[str, Path], tiny_model: Callable[..., VisionTransformer]
) -> None:
    model = tiny_model(1, class_names=None, mean=None, std=None)
    model.train()
    (result,) = predict_files(model, [images["gray"]], top_k=1)
    assert result["top_k"][0]["class"] in {"0", "1", "2", "3"}
    assert model.training, "predict_files gives the model back in the mode it found it"


def test_bad_arguments(images: dict[str, Path], tiny_model: Callable[..., VisionTransformer]) -> None:
    model = tiny_model(1)
    with pytest.raises(ValueError, match="top_k must be at least 1, got 0"):
        list(predict_files(model, [images["gray"]], top_k=0))
    with pytest.raises(ValueError, match="no classification head"):
        list(predict_files(tiny_model(1, num_classes=0, class_names=None), [images["gray"]]))
