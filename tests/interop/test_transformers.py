"""transformers' ViTForImageClassification <-> vitkit on random models: logits both ways, folders, processors."""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from interop_helpers import TOLERANCE, max_logit_difference, random_images, randomise

from vitkit import VisionTransformer
from vitkit.interop import from_transformers, to_transformers

SMALL = dict(patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
CASES = {
    # ViTConfig keywords, image (height, width)
    "non-square": (dict(SMALL, image_size=(24, 40), num_labels=7), (24, 40)),
    "no-qkv-bias": (dict(SMALL, image_size=48, qkv_bias=False, num_labels=3), (48, 48)),
    "grey": (dict(SMALL, image_size=16, num_channels=1, num_labels=2), (16, 16)),
}


def make_peer(case: str):
    kwargs, size = CASES[case]
    return randomise(transformers.ViTForImageClassification(transformers.ViTConfig(**kwargs))), size


@pytest.mark.parametrize("case", list(CASES))
def test_transformers_to_vitkit_and_back_keeps_the_logits(case: str, tmp_path) -> None:
    peer, (height, width) = make_peer(case)
    images = random_images(3, height, width, channels=peer.config.num_channels)
    model = from_transformers(peer)
    assert model.config.layer_norm_eps == 1e-12
    assert max_logit_difference(model, peer, images) <= TOLERANCE
    to_transformers(model, tmp_path / "exported")
    back = transformers.ViTForImageClassification.from_pretrained(tmp_path / "exported")
    assert max_logit_difference(back, peer, images) <= TOLERANCE


def test_named_size_vit_b16_converts_exactly() -> None:
    peer = randomise(transformers.ViTForImageClassification(transformers.ViTConfig(image_size=32, num_labels=10)))
    model = from_transformers(peer)  # ViT-B/16 (the ViTConfig defaults); the way back is tested on small models
    assert (model.config.hidden_dim, model.config.depth, model.config.num_heads) == (768, 12, 12)
    assert max_logit_difference(model, peer, random_images(2, 32, 32)) <= TOLERANCE


def test_a_saved_folder_loads_with_its_labels_and_preprocessing(tmp_path) -> None:
    peer, _ = make_peer("non-square")
    peer.config.id2label = {i: f"class {i}" for i in range(7)}
    peer.save_pretrained(tmp_path)
    processor = transformers.ViTImageProcessor(size={"height": 24, "width": 40}, resample=3, image_mean=[0.4] * 3)
    processor.save_pretrained(tmp_path)
    model = from_transformers(tmp_path)
    config = model.config
    assert config.class_names == [f"class {i}" for i in range(7)]
    assert (config.interpolation, config.crop_mode, config.crop_pct, config.mean) == (
        "bicubic",
        "squash",
        1.0,
        (0.4,) * 3,
    )
    assert max_logit_difference(model, peer, random_images(2, 24, 40)) <= TOLERANCE


def test_exported_image_processor_does_what_eval_transform_does(tmp_path) -> None:
    import numpy as np
    from PIL import Image

    from vitkit.data import eval_transform

    torch.manual_seed(0)
    model = VisionTransformer(image_size=32, patch_size=8, hidden_dim=32, depth=1, num_heads=2, mlp_dim=64,
                              num_classes=2, interpolation="bicubic", crop_pct=0.875, mean=(0.5,) * 3,
                              std=(0.25,) * 3)  # fmt: skip
    to_transformers(model, tmp_path)
    assert json.loads((tmp_path / "preprocessor_config.json").read_text())["crop_size"] == {"height": 32, "width": 32}
    processor = transformers.AutoImageProcessor.from_pretrained(tmp_path, backend="pil")
    y, x = np.mgrid[0:50, 0:70]
    photo = Image.fromarray(np.stack([x * 3, y * 5, x * y % 256], -1).astype(np.uint8))
    theirs = torch.as_tensor(processor(photo, return_tensors="np")["pixel_values"][0])
    diff = (eval_transform(model.config)(photo) - theirs).abs()
    assert diff.max() <= 1 / 255 / 0.25 + 1e-6 and (diff > 1e-5).float().mean() < 0.01  # at most one uint8 level
    # Read back, the processor gives the same preprocessing (crop_pct 32/36: the resize 36 that 0.875 rounds to).
    assert torch.equal(eval_transform(from_transformers(tmp_path).config)(photo), eval_transform(model.config)(photo))


def test_models_transformers_cannot_hold_are_refused(tmp_path) -> None:
    model = VisionTransformer(image_size=16, patch_size=8, hidden_dim=32, depth=1, num_heads=2, mlp_dim=64,
                              pool="mean", class_token=False, fc_norm=True)  # fmt: skip
    with pytest.raises(ValueError, match="cannot hold this model: mean pooling or no class token, fc_norm"):
        to_transformers(model, tmp_path)
