"""model/weights.py: old config files, fc_norm and pre-logits heads, foreign sin-cos tables, key and shape errors."""

import json

import pytest
import torch
from torch import nn

from vitkit import VisionTransformer
from vitkit.model import ViTConfig
from vitkit.model.weights import find_weights, load_weights

SMALL = dict(image_size=8, patch_size=2, in_channels=1, num_classes=3, hidden_dim=32, depth=2, num_heads=4, mlp_dim=64)


def test_config_files_written_before_the_new_fields_load_with_the_old_behaviour(tmp_path):
    torch.manual_seed(0)
    model = VisionTransformer(**SMALL).eval()
    model.save_pretrained(tmp_path)
    data = json.loads((tmp_path / "config.json").read_text())
    for key in ("fc_norm", "pre_logits_dim", "interpolation", "crop_pct", "crop_mode"):
        del data[key]
    (tmp_path / "config.json").write_text(json.dumps(data))
    loaded = VisionTransformer.from_pretrained(tmp_path).eval()
    assert loaded.config == model.config
    assert (loaded.config.interpolation, loaded.config.crop_pct, loaded.config.crop_mode) == ("bilinear", 1.0, "center")
    images = torch.randn(2, 1, 8, 8)
    assert torch.equal(loaded(images), model(images))


def test_fc_norm_and_pre_logits_compute_what_they_say():
    torch.manual_seed(0)
    model = VisionTransformer(**SMALL, pool="mean", class_token=False, fc_norm=True, pre_logits_dim=16).eval()
    assert isinstance(model.norm, nn.Identity) and model.head.in_features == 16
    images = torch.randn(2, 1, 8, 8)
    x = model.patch_embed(images) + model.pos_embed
    for block in model.blocks:
        x = block(x)
    pooled = nn.functional.layer_norm(x.mean(dim=1), (32,), model.fc_norm.weight, model.fc_norm.bias, eps=1e-6)
    linear = model.pre_logits[0]
    expected = model.head(torch.tanh(pooled @ linear.weight.T + linear.bias))
    torch.testing.assert_close(model(images), expected)
    model.reset_head(5)
    assert model(images).shape == (2, 5)


def test_a_foreign_sincos_table_is_kept_and_resampled_not_replaced(tmp_path):
    model = VisionTransformer(**SMALL, pos_embed="sincos")
    foreign = torch.randn_like(model.pos_embed)
    state = {**model.state_dict(), "pos_embed": foreign}
    model.load_weights(state)
    assert torch.equal(model.pos_embed, foreign)
    model.save_pretrained(tmp_path)
    assert torch.equal(VisionTransformer.from_pretrained(tmp_path).pos_embed, foreign)
    bigger = VisionTransformer.from_pretrained(tmp_path, image_size=16)
    own = VisionTransformer(**{**SMALL, "image_size": 16}, pos_embed="sincos").pos_embed
    assert bigger.pos_embed.shape == own.shape and not torch.allclose(bigger.pos_embed, own)
    assert torch.equal(bigger.pos_embed[:, 0], foreign[:, 0])


def test_state_dict_errors_list_missing_unexpected_and_mismatched_keys():
    model = VisionTransformer(**SMALL)
    state = model.state_dict()
    del state["blocks.1.mlp.fc1.bias"]
    state["blocks.0.attn.qkv.weight"] = torch.zeros(96, 32)
    state["head.weight"] = torch.zeros(7, 32)
    with pytest.raises(ValueError) as raised:
        load_weights(model, state)
    message = str(raised.value)
    assert "missing keys: ['blocks.1.mlp.fc1.bias']" in message
    assert "unexpected keys: ['blocks.0.attn.qkv.weight']" in message
    assert "head.weight: weights (7, 32) vs model (3, 32)" in message


def test_find_weights_says_what_it_expected(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such folder or file; expected a vitkit model or run folder"):
        find_weights(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="has no model.safetensors"):
        find_weights(tmp_path)
    VisionTransformer(ViTConfig(**SMALL)).save_pretrained(tmp_path)
    assert find_weights(tmp_path) == (tmp_path / "model.safetensors", tmp_path / "config.json")
