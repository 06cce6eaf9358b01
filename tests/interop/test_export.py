"""`vitkit export --format onnx` as a user meets it: a few lines of output, a checked graph with a dynamic image size,
a file that describes itself, and the docs' onnxruntime program that reproduces `vitkit predict` from it alone."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from interop_helpers import random_images, randomise
from PIL import Image

from vitkit import VisionTransformer, cli

DOCS_PAGE = Path(__file__).parents[2] / "docs" / "guides" / "onnx.md"
NAMES = ["cat", "dog", "fox", "owl", "elk", "emu", "yak"]


class Exported:
    """One export shared by the tests (the dynamo exporter takes seconds): the run, the file, what was shown."""

    def __init__(self, tmp: Path) -> None:
        torch.manual_seed(0)
        # Preprocessing unlike the defaults: bicubic, a 0.875 crop, its own mean and std, a rectangular size.
        self.model = randomise(VisionTransformer(
            image_size=(24, 32), patch_size=8, hidden_dim=32, depth=2, num_heads=2, mlp_dim=32, num_classes=len(NAMES),
            class_names=NAMES, mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3), interpolation="bicubic", crop_pct=0.875,
        ))  # fmt: skip
        self.run_dir, self.path = tmp / "run", tmp / "model.onnx"
        self.model.save_pretrained(self.run_dir)
        root, records, out = logging.getLogger(), [], io.StringIO()
        handler = logging.Handler(logging.INFO)
        handler.emit = records.append  # type: ignore[method-assign]
        level = root.level
        root.setLevel(logging.INFO)  # as the command line logs without --quiet
        root.addHandler(handler)
        try:
            with contextlib.redirect_stdout(out):
                self.code = cli.main(["export", str(self.run_dir), "--format", "onnx", "--dynamic-image-size",
                                      "--check-size", "48x24", "--check-size", "16",
                                      "--out", str(self.path)])  # fmt: skip
        finally:
            root.removeHandler(handler)
            root.setLevel(level)
        self.printed = out.getvalue().splitlines()
        self.records = records


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Exported:
    return Exported(tmp_path_factory.mktemp("export"))


def test_export_shows_a_few_lines_and_the_exporters_logs_stay_at_debug(exported: Exported) -> None:
    assert exported.code == 0
    shown = exported.printed + [record.getMessage() for record in exported.records]
    assert len(shown) <= 5, "\n".join(shown)
    assert not [r.name for r in exported.records if r.name.startswith(("onnxscript", "onnx_ir"))]


def test_the_dynamic_graph_checks_itself_and_matches_pytorch_at_another_size(exported: Exported) -> None:
    checks = re.search(r"vs PyTorch, max abs difference of logits: (.+)", "\n".join(exported.printed)).group(1)
    differences = dict(check.rsplit(" ", 1) for check in checks.split(", "))
    assert set(differences) == {"batch 1", "batch 5", "image 48x24", "image 16x16"}
    assert max(float(v) for v in differences.values()) <= 1e-4
    # Independently of the command's own check: onnxruntime at a third size vs the resized PyTorch model.
    import onnxruntime

    session = onnxruntime.InferenceSession(str(exported.path), providers=["CPUExecutionProvider"])
    images = random_images(3, 40, 56)
    model = VisionTransformer.from_pretrained(exported.run_dir).eval()
    model.set_image_size((40, 56))
    with torch.no_grad():
        expected = model(images).numpy()
    assert np.abs(session.run(["logits"], {"images": images.numpy()})[0] - expected).max() <= 1e-4


def test_the_onnx_file_holds_class_names_and_preprocessing(exported: Exported) -> None:
    metadata = {entry.key: json.loads(entry.value) for entry in onnx.load(str(exported.path)).metadata_props}
    assert metadata["class_names"] == NAMES
    assert metadata["image_size"] == [24, 32] and metadata["in_channels"] == 3
    assert metadata["mean"] == pytest.approx([0.4, 0.5, 0.6]) and metadata["std"] == pytest.approx([0.2, 0.25, 0.3])
    assert (metadata["interpolation"], metadata["crop_pct"], metadata["crop_mode"]) == ("bicubic", 0.875, "center")


def docs_program() -> str:
    """The Python block of docs/guides/onnx.md that follows the note that the test suite runs it."""
    page = DOCS_PAGE.read_text(encoding="utf-8")
    return re.search(r"the test suite runs this block.*?```python\n(.*?)```", page, re.DOTALL).group(1)


@pytest.mark.parametrize("size", [(50, 37), (31, 64)])
def test_the_docs_onnxruntime_program_gives_vitkit_predicts_probabilities(
    exported: Exported, tmp_path: Path, capsys, monkeypatch, size: tuple[int, int]
) -> None:
    rng = np.random.default_rng(size[0])
    image = tmp_path / "photo.png"
    y, x = np.mgrid[0 : size[1], 0 : size[0]]
    pixels = np.stack([x * 5, y * 7, (x * y) % 251], -1) + rng.integers(0, 40, (size[1], size[0], 3))
    Image.fromarray((pixels % 256).astype(np.uint8)).save(image)
    assert cli.main(["predict", str(exported.run_dir), str(image), "--device", "cpu"]) == 0
    expected = {entry["class"]: entry["probability"] for entry in json.loads(capsys.readouterr().out)["top_k"]}
    monkeypatch.setattr(sys, "argv", ["predict_onnx.py", str(exported.path), str(image)])
    exec(compile(docs_program(), str(DOCS_PAGE), "exec"), {"__name__": "__main__"})  # noqa: S102 (the docs' own code)
    printed = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
    assert [name for name, _ in printed] == list(expected)  # the same five classes, in the same order
    for name, probability in printed:
        assert float(probability) == pytest.approx(expected[name], abs=2e-6)
