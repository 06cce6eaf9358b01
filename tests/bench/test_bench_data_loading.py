"""`vitkit bench --data-dir`'s measurements: every pipeline compared yields the training input of the same files,
the start-up stages are timed, and the rows carry ratios to timm's loader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vitkit.bench.data_loading import compare_training_input, startup_seconds, training_loaders
from vitkit.data import ClassFolder

PIPELINES = ["vitkit", "vitkit transforms.v2", "timm", "timm, no colour jitter"]


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        (root / "train" / c).mkdir(parents=True)
        for i in range(8):
            pixels = rng.integers(0, 256, (48 + 4 * i, 64, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / "train" / c / f"{i}.jpg", quality=90)
    return root


def test_every_pipeline_yields_normalised_crops_of_the_same_files(photos: Path) -> None:
    folder = ClassFolder(photos / "train")
    pipelines = training_loaders(folder, 32)
    assert list(pipelines) == PIPELINES, "timm is installed with the dev extra: its loader must be compared"
    for name, (dataset, finish) in pipelines.items():
        image, label = dataset[9]
        if finish is not None:
            assert image.dtype == torch.uint8, f"{name}: the workers send uint8, finished in the training process"
            image = finish(image.unsqueeze(0))[0]
        assert image.shape == (3, 32, 32) and image.dtype == torch.float32 and label == 1, name
        assert -3 < float(image.mean()) < 3, f"{name}: normalised with ImageNet's statistics"
    assert pipelines["vitkit"].finish is not None


def test_comparison_and_startup_report_each_stage_and_ratios_to_timm(photos: Path) -> None:
    result = compare_training_input(photos, workers=0, image_size=32, batch_size=4, batches=2, rounds=2)
    rows = {row["label"]: row for row in result["rows"]}
    assert list(rows) == PIPELINES and result["files"] == 16
    assert rows["timm"]["ratio_to_timm"] == 1.0
    for row in rows.values():
        assert len(row["rounds"]) == 2 and row["images_per_s"] > 0
        assert row["ratio_to_timm"] == pytest.approx(row["images_per_s"] / rows["timm"]["images_per_s"])
    with pytest.raises(ValueError, match="has 16 images; timing 8 \\+ 1 batches of 4 needs 36"):
        compare_training_input(photos, workers=0, image_size=32, batch_size=4, batches=8)
    startup = startup_seconds(photos, workers=0, image_size=32)
    assert startup["files"] == 16
    assert all(startup[key] > 0 for key in ("scan_s", "check_s", "statistics_s", "check_with_index_s"))
