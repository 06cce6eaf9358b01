"""Class names for converted checkpoints: `vitkit convert --labels FILE` in each format, and its mistakes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from interop_helpers import randomise, write_original_npz
from PIL import Image

from vitkit import VisionTransformer, cli
from vitkit.interop.labels import read_labels

NAMES = ["heron", "stork", "crane"]


@pytest.mark.parametrize(
    ("file_name", "text"),
    [
        ("labels.txt", "heron\nstork\n\ncrane\n"),  # one a line; blank lines ignored
        ("labels.json", json.dumps(NAMES)),
        ("id2label.json", json.dumps({"2": "crane", "0": "heron", "1": "stork"})),  # any key order
    ],
)
def test_labels_files_in_each_format(tmp_path: Path, file_name: str, text: str) -> None:
    (tmp_path / file_name).write_text(text)
    assert read_labels(tmp_path / file_name, 3) == NAMES


@pytest.mark.parametrize(
    ("file_name", "text", "message"),
    [
        ("labels.txt", "heron\nstork\n", "names 2 classes, but the model has 3"),
        ("labels.json", '{"0": "heron", "1": "stork", "3": "crane"}', r"no name for class indices \[2\]"),
        ("labels.json", '{"a": "heron"}', "keys of a JSON object must be class indices"),
        ("labels.json", '"heron"', "expected one name a line"),
        ("labels.json", "[heron", "is not valid JSON"),
    ],
)
def test_a_wrong_labels_file_is_explained(tmp_path: Path, file_name: str, text: str, message: str) -> None:
    (tmp_path / file_name).write_text(text)
    with pytest.raises(ValueError, match=message):
        read_labels(tmp_path / file_name, 3)


def test_convert_with_labels_then_predict_names_the_classes(tmp_path: Path, capsys) -> None:
    torch.manual_seed(0)
    known = randomise(VisionTransformer(image_size=16, patch_size=8, hidden_dim=16, depth=1, num_heads=2, mlp_dim=16,
                                        num_classes=3))  # fmt: skip
    write_original_npz(known, tmp_path / "vit.npz")
    (tmp_path / "labels.txt").write_text("\n".join(NAMES))
    argv = ["convert", str(tmp_path / "vit.npz"), "--from", "jax", "--labels", str(tmp_path / "labels.txt")]
    assert cli.main([*argv, "--out", str(tmp_path / "named")]) == 0
    assert "class names: heron, stork, crane" in capsys.readouterr().out
    Image.new("RGB", (20, 16), (90, 140, 200)).save(tmp_path / "sky.png")
    assert cli.main(["predict", str(tmp_path / "named"), str(tmp_path / "sky.png"), "--device", "cpu"]) == 0
    assert {entry["class"] for entry in json.loads(capsys.readouterr().out)["top_k"]} == set(NAMES)
    # Without --labels, a head that is not ImageNet's keeps its indices, and the command says how to name them.
    assert cli.main(["convert", str(tmp_path / "vit.npz"), "--from", "jax", "--out", str(tmp_path / "bare")]) == 0
    assert "indices only: pass --labels FILE" in capsys.readouterr().out
