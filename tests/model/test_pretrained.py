"""save_pretrained -> from_pretrained, other image sizes, other classes."""

import json

import pytest
import torch

from vitkit import VisionTransformer, create_model
from vitkit.model.weights import resize_position_vectors, set_image_size

SMALL = dict(image_size=8, patch_size=2, in_channels=1, num_classes=3, hidden_dim=32, depth=2, num_heads=4, mlp_dim=64)


@pytest.mark.parametrize("pos_embed", ["learned", "sincos"])
def test_save_then_load_gives_identical_logits(tmp_path, pos_embed):
    torch.manual_seed(0)
    model = VisionTransformer(**SMALL, pos_embed=pos_embed, class_names=["a", "b", "c"], mean=[0.5], std=[0.25]).eval()
    model.save_pretrained(tmp_path / "run")
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["config.json", "model.safetensors"]
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["model_type"] == "vitkit" and saved["class_names"] == ["a", "b", "c"] and saved["image_size"] == [8, 8]
    loaded = VisionTransformer.from_pretrained(tmp_path / "run").eval()
    assert loaded.config == model.config
    images = torch.randn(4, 1, 8, 8)
    assert torch.equal(loaded(images), model(images))
    from_file = VisionTransformer.from_pretrained(tmp_path / "run" / "model.safetensors").eval()
    assert torch.equal(from_file(images), model(images))


def test_load_at_another_image_size_resizes_learned_position_vectors(tmp_path):
    torch.manual_seed(0)
    model = VisionTransformer(**SMALL)
    model.save_pretrained(tmp_path)
    bigger = VisionTransformer.from_pretrained(tmp_path, image_size=16)
    assert bigger.image_size == (16, 16)
    assert bigger.pos_embed.shape == (1, 1 + 64, 32)
    torch.testing.assert_close(bigger.pos_embed[:, 0], model.pos_embed[:, 0])  # CLS position kept
    assert bigger(torch.randn(2, 1, 16, 16)).shape == (2, 3)
    # Everything but the position vectors is carried over unchanged.
    assert torch.equal(bigger.blocks[1].mlp.fc2.weight, model.blocks[1].mlp.fc2.weight)


def test_resize_position_vectors_keeps_smooth_patterns():
    dim = 4
    rows = torch.arange(4.0).repeat_interleave(4)  # a ramp down the rows of a 4x4 grid
    pos = torch.cat([torch.full((1, dim), 7.0), rows[:, None].expand(16, dim)]).unsqueeze(0)
    resized = resize_position_vectors(pos, (4, 4), (8, 8), num_prefix_tokens=1)
    assert resized.shape == (1, 65, dim)
    assert torch.equal(resized[0, 0], torch.full((dim,), 7.0))
    grid = resized[0, 1:, 0].reshape(8, 8)
    assert torch.allclose(grid[:, 0], grid[:, 5])  # still constant along each row
    assert (grid[1:, 0] >= grid[:-1, 0]).all()  # still increasing down the rows
    assert resize_position_vectors(pos, (4, 4), (4, 4), 1) is pos


def test_set_image_size_recomputes_sincos():
    model = VisionTransformer(**SMALL, pos_embed="sincos")
    model.set_image_size((8, 12))
    assert model.pos_embed.shape == (1, 1 + 4 * 6, 32)
    assert "pos_embed" in dict(model.named_buffers())
    assert model(torch.randn(1, 1, 8, 12)).shape == (1, 3)


def adamw_first_step(before: torch.Tensor, grad: torch.Tensor, lr: float) -> torch.Tensor:
    """AdamW (no weight decay) on fresh moments: m / sqrt(v) after bias correction is g / |g|, so each value moves
    by lr * g / (|g| + eps), about lr against the sign of its gradient."""
    return before - lr * grad / (grad.abs() + 1e-8)


def step_at(model: VisionTransformer, optimizer: torch.optim.Optimizer, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One training step on images of ``size``; returns (position vectors before it, their gradient)."""
    optimizer.zero_grad(set_to_none=True)
    model(torch.randn(2, 1, size, size)).square().mean().backward()
    before, grad = model.pos_embed.detach().clone(), model.pos_embed.grad.clone()
    optimizer.step()
    return before, grad


def test_set_image_size_with_the_optimizer_trains_the_resized_position_vectors():
    torch.manual_seed(0)
    model = VisionTransformer(**SMALL)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01, weight_decay=0.0)
    step_at(model, optimizer, 8)
    assert model.pos_embed in optimizer.state
    set_image_size(model, 12, optimizer=optimizer)
    assert model.pos_embed.shape == (1, 1 + 6 * 6, 32) and model.pos_embed.grad is None
    assert any(p is model.pos_embed for group in optimizer.param_groups for p in group["params"])
    before, grad = step_at(model, optimizer, 12)
    torch.testing.assert_close(model.pos_embed.detach(), adamw_first_step(before, grad, lr=0.01))


def test_set_image_size_keeps_the_parameter_an_optimizer_holds():
    torch.manual_seed(0)
    model = VisionTransformer(**SMALL)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01, weight_decay=0.0)
    model.set_image_size(12)  # before the first step: the optimizer has no state yet and trains the new vectors
    before, grad = step_at(model, optimizer, 12)
    torch.testing.assert_close(model.pos_embed.detach(), adamw_first_step(before, grad, lr=0.01))
    # After a step, its moments are for the old grid: without the optimizer passed, its next step fails loudly.
    model.set_image_size(16)
    with pytest.raises(RuntimeError, match="size"):
        step_at(model, optimizer, 16)


def test_load_with_new_number_of_classes_replaces_the_head(tmp_path, caplog):
    torch.manual_seed(0)
    model = VisionTransformer(**SMALL, class_names=["a", "b", "c"])
    model.save_pretrained(tmp_path)
    tuned = VisionTransformer.from_pretrained(tmp_path, num_classes=7)
    assert tuned.num_classes == 7 and tuned.head.weight.shape == (7, 32)
    assert tuned.config.class_names is None
    assert torch.equal(tuned.blocks[0].attn.q.weight, model.blocks[0].attn.q.weight)
    assert "new head" in caplog.text


def test_reset_head_gives_a_fresh_head_for_other_classes_and_keeps_the_rest(tmp_path):
    torch.manual_seed(0)
    model = VisionTransformer(**SMALL, class_names=["a", "b", "c"]).eval()
    images = torch.randn(2, 1, 8, 8)
    trunk = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("head.")}
    features = model.forward_features(images)[:, 0].detach()  # the CLS token's final features
    names = ["v", "w", "x", "y", "z"]
    model.reset_head(5, names)
    assert (model.num_classes, model.config.class_names, model.head.weight.shape) == (5, names, (5, 32))
    assert torch.equal(model.head.bias, torch.zeros(5))
    assert 0.01 < model.head.weight.std() < 0.03 and model.head.weight.abs().max() <= 0.04  # N(0, 0.02) cut at 2 std
    assert all(torch.equal(v, trunk[k]) for k, v in model.state_dict().items() if not k.startswith("head."))
    torch.testing.assert_close(model(images), features @ model.head.weight.T + model.head.bias)
    assert {name for name, _ in model.named_parameters()} >= {"head.weight", "head.bias"}  # an optimizer sees them
    model.save_pretrained(tmp_path)
    loaded = VisionTransformer.from_pretrained(tmp_path).eval()
    assert loaded.config.class_names == names and torch.equal(loaded(images), model(images))
    with pytest.raises(ValueError, match="class_names has 2 names but num_classes is 4"):
        model.reset_head(4, ["p", "q"])
    assert model.num_classes == 5, "a refused reset leaves the model as it was"
    model.reset_head(0)  # no head: the model gives the pooled features
    torch.testing.assert_close(model(images), features)


def test_load_weights_rejects_weights_of_another_model():
    small = VisionTransformer(**SMALL)
    wider = VisionTransformer(**{**SMALL, "hidden_dim": 64})
    with pytest.raises(ValueError, match="do not fit this model"):
        small.load_weights(wider.state_dict())
    partial = {k: v for k, v in small.state_dict().items() if not k.startswith("blocks.1.")}
    with pytest.raises(ValueError, match="missing keys.*blocks.1"):
        small.load_weights(partial)


def test_from_pretrained_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere: no such folder or file"):
        VisionTransformer.from_pretrained(tmp_path / "nowhere")
    VisionTransformer(**SMALL).save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"this is not safetensors")
    with pytest.raises(ValueError, match="model.safetensors is not a readable safetensors"):
        VisionTransformer.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text('{"hidden_dimension": 3}')
    with pytest.raises(ValueError, match="unknown ViT config keys.*hidden_dimension"):
        VisionTransformer.from_pretrained(tmp_path)


def test_named_model_round_trip(tmp_path):
    model = create_model("vit_digits").eval()
    model.save_pretrained(tmp_path)
    images = torch.randn(2, 1, 8, 8)
    assert torch.equal(VisionTransformer.from_pretrained(tmp_path).eval()(images), model(images))


def test_save_config_writes_only_the_config(tmp_path):
    model = VisionTransformer(**SMALL)
    model.save_config(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]
    assert json.loads((tmp_path / "config.json").read_text())["hidden_dim"] == 32
