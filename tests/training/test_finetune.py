"""Fine-tuning with --init-from: new head for other classes, position embeddings resized for another image size."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from training_helpers import TINY, write_digit_folder

from vitkit.io import load_safetensors
from vitkit.model.weights import resize_position_vectors
from vitkit.training import load_run, train

NO_ARCHITECTURE = {name: None for name in TINY}  # take the architecture from the weights' config.json


@pytest.fixture
def source_run(tiny):
    return train(tiny("source", epochs=1))


@pytest.mark.parametrize("init_file", ["best.safetensors", None])
def test_fine_tune_on_other_classes_at_another_size(tiny, tmp_path: Path, source_run, init_file: str | None) -> None:
    folder = write_digit_folder(tmp_path / "three", classes=[0, 1, 2], per_class=40, size=16)
    init_from = source_run.run_dir / init_file if init_file else source_run.run_dir
    source = load_safetensors(source_run.run_dir / (init_file or "model.safetensors"))
    # lr so small that the trained weights are still the loaded ones, up to 1e-6.
    config = tiny(
        "tuned", data_dir=str(folder), image_size=16, init_from=str(init_from), lr=1e-9, min_lr=0.0,
        weight_decay=0.0, batch_size=16, epochs=1, ema_decay=0.0, **NO_ARCHITECTURE,
    )  # fmt: skip
    result = train(config)
    model, saved_config = load_run(result.run_dir)
    assert saved_config.init_from == str(init_from)
    assert model.config.hidden_dim == 32 and model.config.depth == 2  # the source's architecture
    assert model.num_classes == 3 and model.config.class_names == ["one", "two", "zero"]
    assert model.image_size == (16, 16) and model.pos_embed.shape == (1, 1 + 8 * 8, 32)
    tuned = model.state_dict()
    for key in (
        "patch_embed.proj.weight",
        "blocks.0.attn.q.weight",
        "blocks.1.mlp.fc2.bias",
        "cls_token",
        "norm.weight",
    ):
        torch.testing.assert_close(tuned[key], source[key], atol=1e-6, rtol=0)
    resized = resize_position_vectors(source["pos_embed"], (4, 4), (8, 8), num_prefix_tokens=1)
    torch.testing.assert_close(tuned["pos_embed"], resized, atol=1e-6, rtol=0)
    assert tuned["head.weight"].shape == (3, 32)


def test_init_from_a_missing_path_is_explained(tiny, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="--init-from .*no such folder or file"):
        train(tiny(init_from=str(tmp_path / "nowhere")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="has no model.safetensors"):
        train(tiny(init_from=str(tmp_path / "empty")))
