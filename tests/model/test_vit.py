"""Behaviour of the whole model: token sequence, pooling, position vectors, attention maps."""

import weakref

import pytest
import torch
from attention_reference import reference_attention

from vitkit import VisionTransformer, ViTConfig
from vitkit.model import patchify

SMALL = dict(image_size=8, patch_size=2, in_channels=1, num_classes=5, hidden_dim=32, depth=2, num_heads=4, mlp_dim=64)


def permute_patches(images: torch.Tensor, patch: int, order: torch.Tensor) -> torch.Tensor:
    """Shuffle the patches of square images, keeping each patch intact."""
    b, c, h, w = images.shape
    g = h // patch
    grid = images.reshape(b, c, g, patch, g, patch).permute(0, 2, 4, 1, 3, 5).reshape(b, g * g, c, patch, patch)
    grid = grid[:, order]
    return grid.reshape(b, g, g, c, patch, patch).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)


def test_permute_patches_helper_moves_patches():
    images = torch.randn(1, 1, 8, 8)
    order = torch.randperm(16)
    torch.testing.assert_close(patchify(permute_patches(images, 2, order), (2, 2)), patchify(images, (2, 2))[:, order])


def test_encoder_is_permutation_equivariant_without_position_vectors():
    torch.manual_seed(0)
    model = VisionTransformer(**SMALL).eval()
    with torch.no_grad():
        model.pos_embed.zero_()
    images = torch.randn(2, 1, 8, 8)
    order = torch.randperm(16)
    features = model.forward_features(images)
    shuffled = model.forward_features(permute_patches(images, 2, order))
    torch.testing.assert_close(shuffled[:, 1:], features[:, 1:][:, order], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(shuffled[:, 0], features[:, 0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("pos_embed", ["learned", "sincos"])
def test_position_vectors_break_permutation_equivariance(pos_embed):
    torch.manual_seed(0)
    model = VisionTransformer(**SMALL, pos_embed=pos_embed).eval()
    images = torch.randn(2, 1, 8, 8)
    order = torch.randperm(16)
    features = model.forward_features(images)
    shuffled = model.forward_features(permute_patches(images, 2, order))
    assert (shuffled[:, 1:] - features[:, 1:][:, order]).abs().max() > 0.05
    assert (shuffled[:, 0] - features[:, 0]).abs().max() > 1e-4


def test_cls_token_is_first_in_the_sequence():
    torch.manual_seed(0)
    model = VisionTransformer(**SMALL).eval()
    images = torch.randn(3, 1, 8, 8)
    sequence = model.embed(images)
    assert sequence.shape == (3, 1 + 16, 32)
    expected_first = (model.cls_token + model.pos_embed[:, :1]).expand(3, 1, 32)
    torch.testing.assert_close(sequence[:, :1], expected_first)
    # The head reads only position 0 when pool="cls".
    tokens = model.forward_features(images)
    noisy = tokens.clone()
    noisy[:, 1:] += torch.randn_like(noisy[:, 1:])
    torch.testing.assert_close(model.forward_head(noisy), model.forward_head(tokens))


def test_mean_pool_averages_patch_tokens_and_ignores_cls():
    torch.manual_seed(0)
    model = VisionTransformer(**SMALL, pool="mean").eval()
    tokens = model.forward_features(torch.randn(2, 1, 8, 8))
    torch.testing.assert_close(model.forward_head(tokens), model.head(tokens[:, 1:].mean(dim=1)))
    no_cls = VisionTransformer(**SMALL, pool="mean", class_token=False)
    assert no_cls.embed(torch.randn(2, 1, 8, 8)).shape == (2, 16, 32)
    assert not hasattr(no_cls, "cls_token")


def test_forward_is_features_then_head():
    torch.manual_seed(0)
    model = VisionTransformer(**SMALL).eval()
    images = torch.randn(2, 1, 8, 8)
    tokens = model.forward_features(images)
    assert tokens.shape == (2, 17, 32)
    torch.testing.assert_close(model(images), model.forward_head(tokens))
    # forward_features ends with the final LayerNorm.
    torch.testing.assert_close(tokens.mean(-1), torch.full((2, 17), 0.0) + model.norm.bias.mean(), atol=1e-5, rtol=0)


def test_sincos_position_vectors_are_a_fixed_buffer():
    model = VisionTransformer(**SMALL, pos_embed="sincos")
    assert "pos_embed" not in dict(model.named_parameters())
    assert "pos_embed" in model.state_dict()
    table = model.pos_embed[0]
    assert table.shape == (17, 32)
    assert torch.equal(table[0], torch.zeros(32))  # the CLS position carries no location
    distances = torch.cdist(table[1:], table[1:])
    assert distances[~torch.eye(16, dtype=torch.bool)].min() > 0.1  # every patch position is distinct
    assert table.abs().max() <= 1.0


def test_attention_maps_are_probability_rows_per_block_and_head():
    torch.manual_seed(0)
    model = VisionTransformer(**SMALL).eval()
    images = torch.randn(3, 1, 8, 8)
    maps = model.get_attention_maps(images)
    assert len(maps) == 2
    for m in maps:
        assert m.shape == (3, 4, 17, 17)
        assert (m >= 0).all()
        torch.testing.assert_close(m.sum(-1), torch.ones(3, 4, 17))
    # The first map is the hand-written attention of the first block on its input spelled out: patches through the
    # linear projection, the CLS token first, position vectors added, LayerNorm.
    proj, block = model.patch_embed.proj, model.blocks[0]
    tokens = patchify(images, (2, 2)) @ proj.weight.flatten(1).T + proj.bias
    tokens = torch.cat([model.cls_token.expand(3, 1, 32), tokens], dim=1) + model.pos_embed
    normalised = torch.nn.functional.layer_norm(tokens, (32,), block.norm1.weight, block.norm1.bias, eps=1e-6)
    with torch.no_grad():
        expected = reference_attention(block.attn, normalised)[1]
    torch.testing.assert_close(maps[0], expected, atol=1e-6, rtol=1e-5)


def test_dropouts_and_drop_path_act_only_in_training():
    torch.manual_seed(0)
    model = VisionTransformer(**SMALL, dropout=0.2, attention_dropout=0.2, drop_path=0.3)
    images = torch.randn(4, 1, 8, 8)
    model.train()
    assert not torch.equal(model(images), model(images))
    model.eval()
    assert torch.equal(model(images), model(images))
    rates = [block.drop_path.p for block in model.blocks]
    assert rates == [0.0, 0.3]


def test_weight_init_is_truncated_normal():
    torch.manual_seed(0)
    model = VisionTransformer(
        image_size=32, patch_size=4, in_channels=3, num_classes=10, hidden_dim=192, depth=2, num_heads=3, mlp_dim=384
    )
    weight = model.blocks[0].mlp.fc1.weight
    assert abs(weight.std().item() - 0.0176) < 0.002  # std of a normal(0, 0.02) cut at 2 std
    assert weight.abs().max() <= 0.04 + 1e-6  # truncated at two standard deviations
    assert torch.equal(model.blocks[0].attn.q.bias, torch.zeros(192))
    assert abs(model.pos_embed.std().item() - 0.0176) < 0.003


def test_param_groups_exclude_norms_biases_position_vectors_and_cls_token():
    model = VisionTransformer(**SMALL)
    decay, no_decay = model.param_groups(0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    no_decay_ids = {id(p) for p in no_decay["params"]}
    assert id(model.pos_embed) in no_decay_ids and id(model.cls_token) in no_decay_ids
    assert id(model.norm.weight) in no_decay_ids and id(model.blocks[0].attn.q.bias) in no_decay_ids
    assert {id(p) for p in decay["params"]} == {
        id(p) for n, p in model.named_parameters() if p.ndim > 1 and n not in ("pos_embed", "cls_token")
    }
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_config_object_carries_the_choices():
    config = ViTConfig(**SMALL, pos_embed="sincos", pool="mean", qkv_bias=False, layer_norm_eps=1e-5)
    model = VisionTransformer(config)
    assert model.config is config
    assert model.image_size == (8, 8) and model.patch_size == (2, 2)
    assert model.in_channels == 1 and model.num_classes == 5
    assert model.blocks[0].attn.q.bias is None
    assert model.norm.eps == 1e-5
    assert VisionTransformer(config, num_classes=7).num_classes == 7
    assert ViTConfig.from_dict(config.to_dict()) == config


def test_rectangular_images():
    model = VisionTransformer(
        image_size=(8, 12), patch_size=(4, 3), num_classes=2, hidden_dim=16, depth=1, num_heads=2, mlp_dim=32
    )  # three channels, the default
    assert model.config.grid_size == (2, 4)
    assert model(torch.randn(2, 3, 8, 12)).shape == (2, 2)


@pytest.mark.parametrize("grad", [True, False])
def test_block_frees_the_attention_output_before_its_mlp_runs(grad):
    """Nothing needs the attention's output once it is added to the residual stream; held through the MLP it was
    the training step's peak memory."""
    model = VisionTransformer(**SMALL).train(grad)
    block = model.blocks[0]
    outputs, alive = [], []
    block.attn.register_forward_hook(lambda module, args, out: outputs.append(weakref.ref(out)))
    block.mlp.register_forward_pre_hook(lambda module, args: alive.append(outputs[-1]() is not None))
    with torch.set_grad_enabled(grad):
        out = block(torch.randn(2, 17, SMALL["hidden_dim"], requires_grad=grad))
    assert alive == [False]
    if grad:
        out.sum().backward()
        assert block.attn.q.weight.grad is not None
