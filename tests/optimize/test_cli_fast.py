"""`--fast` on `vitkit predict` and `evaluate`, and `vitkit bench`, end to end."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from vitkit import VisionTransformer, cli


def run_cli(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    code = cli.main([str(arg) for arg in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def saved_run(tmp_path: Path, trained_digits_model: VisionTransformer) -> tuple[Path, Path]:
    """The trained digits model saved as a run folder, and a folder of 30 digit PNGs (images in class folders)."""
    model = copy.deepcopy(trained_digits_model)
    model.config = model.config.replace(mean=(0.3,), std=(0.4,), class_names=[str(d) for d in range(10)])
    run_dir = model.save_pretrained(tmp_path / "run")
    digits, folder = load_digits(), tmp_path / "digits"
    for index in range(30):
        label = str(int(digits.target[index]))
        (folder / label).mkdir(parents=True, exist_ok=True)
        Image.fromarray((digits.images[index] * 255 / 16).astype(np.uint8), "L").save(folder / label / f"{index}.png")
    return run_dir, folder


def test_predict_and_evaluate_fast_agree_with_plain(
    saved_run: tuple[Path, Path], capsys: pytest.CaptureFixture
) -> None:
    run_dir, folder = saved_run
    results = {}
    for flags in ([], ["--fast"]):
        code, out, err = run_cli(capsys, "predict", run_dir, folder, "--top-k", "1", *flags)
        assert code == 0, err
        results[bool(flags)] = {r["path"]: r["top_k"][0] for r in map(json.loads, out.splitlines())}
    plain, fast = results[False], results[True]
    assert plain.keys() == fast.keys() and len(plain) == 30
    same = sum(plain[path]["class"] == fast[path]["class"] for path in plain)
    assert same >= 29
    code, out, err = run_cli(capsys, "evaluate", run_dir, "--data-dir", folder, "--json", "--fast")
    assert code == 0, err
    result = json.loads(out)
    assert result["num_samples"] == 30
    plain_correct = sum(plain[p]["class"] == Path(p).parent.name for p in plain)
    assert abs(result["top1"] * 30 - plain_correct) <= 1


def test_bench_prints_a_table_and_writes_json(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out_json = tmp_path / "bench.json"
    code, out, err = run_cli(
        capsys, "bench", "--quick", "--fast", "--models", "vit_tiny_patch16_224", "--batch-sizes", "1",
        "--peers", "timm", "--rounds", "1", "--json", out_json,
    )  # fmt: skip
    assert code == 0, err
    assert "vit_tiny_patch16_224 inference, 224px, batch 1" in out
    results = json.loads(out_json.read_text())
    (comparison,) = results["comparisons"]
    labels = [row["label"] for row in comparison["rows"]]
    assert labels[:3] == ["vitkit", "vitkit exact", "vitkit fast"] and "timm" in labels
    timm_row = next(row for row in comparison["rows"] if row["label"] == "timm")
    assert timm_row["ratio_to_fastest_peer"] == 1.0  # the only peer is the fastest
    assert all(row["images_per_s"] > 0 and row["share_of_matmul_peak"] > 0 for row in comparison["rows"])
    assert results["machine"]["threads"] >= 1
