"""The explanation arrays on constructed models and attention whose answers are known by hand."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from vitkit import VisionTransformer
from vitkit.explain import (
    attention_rollout,
    embedding_filters,
    grad_cam,
    head_attention,
    mean_attention_distance,
    position_similarity,
    rollout,
)

# A 2 x 6 grid of 4 x 2 pixel patches: non-square, so rows and columns cannot be mixed up unnoticed.
GRID = dict(image_size=(8, 12), patch_size=(4, 2), in_channels=1, num_classes=3, hidden_dim=16, depth=2, num_heads=2,
            mlp_dim=32)  # fmt: skip
POOLS = [dict(pool="cls"), dict(pool="mean"), dict(pool="mean", class_token=False)]


def uniform_attention_model(**overrides: object) -> VisionTransformer:
    """Zero query and key layers: every score is 0, so every token attends equally to all tokens, in every block."""
    torch.manual_seed(0)
    model = VisionTransformer(**{**GRID, **overrides}).eval()
    with torch.no_grad():
        for block in model.blocks:
            for layer in (block.attn.q, block.attn.k):
                layer.weight.zero_()
                layer.bias.zero_()
    return model


def one_patch_attention_model(patch: int, **overrides: object) -> VisionTransformer:
    """Every token of every block attends (all but exactly) to patch ``patch`` alone.

    All branches that write into the residual stream are zeroed, so each token stays its position vector. Feature 0
    of the position vectors is 0 except at ``patch``; keys read only that feature and the query is a constant, so
    the scores are large for ``patch`` and about 0 elsewhere.
    """
    torch.manual_seed(0)
    model = VisionTransformer(**{**GRID, **overrides}).eval()
    prefix = model.config.num_prefix_tokens
    with torch.no_grad():
        for param in model.parameters():
            param.zero_()
        model.pos_embed.normal_()
        model.pos_embed[0, :, 0] = 0.0
        model.pos_embed[0, prefix + patch, 0] = 8.0
        for block in model.blocks:
            block.norm1.weight.fill_(1.0)
            block.norm2.weight.fill_(1.0)
            block.attn.k.weight[:, 0] = 1.0  # every key feature is the normalised feature 0
            block.attn.q.bias.fill_(10.0)
    return model


def images_for(model: VisionTransformer, batch: int = 2) -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(batch, model.in_channels, *model.image_size)


@pytest.mark.parametrize("pool", POOLS)
@pytest.mark.parametrize("head_fusion", ["mean", "max", "min"])
def test_uniform_attention_gives_a_uniform_rollout(pool: dict, head_fusion: str) -> None:
    model = uniform_attention_model(**pool)
    maps = attention_rollout(model, images_for(model), head_fusion=head_fusion)
    assert maps.shape == (2, 2, 6)
    torch.testing.assert_close(maps, torch.full((2, 2, 6), 1 / 12))


@pytest.mark.parametrize("pool", POOLS)
def test_attention_to_one_patch_concentrates_the_rollout_there(pool: dict) -> None:
    patch = 7  # row 1, column 1
    model = one_patch_attention_model(patch, **pool)
    attentions = model.get_attention_maps(images_for(model))
    prefix = model.config.num_prefix_tokens
    assert bool((attentions[0][:, :, :, prefix + patch] > 0.999).all())  # the construction does what it says
    maps = attention_rollout(model, images_for(model))
    torch.testing.assert_close(maps.sum(dim=(1, 2)), torch.ones(2))
    # By hand: each block mixes (attention + identity) / 2, so after L blocks a patch token keeps 2^-L of itself
    # and draws the rest from the chosen patch; the CLS token draws nothing from other patches at all.
    depth, patches = model.config.depth, model.config.num_patches
    expected = 1.0 if pool["pool"] == "cls" else 1 - (patches - 1) / patches * 2**-depth
    assert maps[:, 1, 1].tolist() == pytest.approx([expected, expected], abs=1e-4)
    assert int(maps[0].flatten().argmax()) == patch


def test_head_fusion_and_discard_ratio_on_a_hand_worked_case() -> None:
    model = VisionTransformer(image_size=4, patch_size=2, in_channels=1, num_classes=2, hidden_dim=8, depth=1,
                              num_heads=2, mlp_dim=8)  # fmt: skip
    # One block, CLS row only matters: the CLS token's attention over [CLS, p0, p1, p2, p3] for two heads.
    attention = torch.full((1, 2, 5, 5), 0.2)
    attention[0, 0, 0] = torch.tensor([0.0, 0.7, 0.1, 0.1, 0.1])
    attention[0, 1, 0] = torch.tensor([0.0, 0.1, 0.1, 0.1, 0.7])
    config = model.config
    # mean: [.4, .1, .1, .4]; max: [.7, .1, .1, .7] / 1.6; min: all .1, uniform (the identity only adds to CLS).
    torch.testing.assert_close(rollout([attention], config, "mean").flatten(), torch.tensor([0.4, 0.1, 0.1, 0.4]))
    torch.testing.assert_close(rollout([attention], config, "max").flatten(), torch.tensor([7, 1, 1, 7]) / 16)
    torch.testing.assert_close(rollout([attention], config, "min").flatten(), torch.full((4,), 0.25))
    # discard_ratio 0.4 drops the weakest 2 of 5 weights of each row. Head 0's CLS row becomes [0, .7, .1, 0, 0]
    # (ties broken by position), head 1's [0, .1, 0, 0, .7]... the fused mean row is what is left, renormalised.
    uneven = attention.clone()
    uneven[0, :, 0] = torch.tensor([0.05, 0.5, 0.25, 0.15, 0.05])
    torch.testing.assert_close(
        rollout([uneven], config, discard_ratio=0.4).flatten(), torch.tensor([0.5, 0.25, 0.15, 0.0]) / 0.9
    )
    with pytest.raises(ValueError, match="head_fusion"):
        rollout([attention], config, "median")
    with pytest.raises(ValueError, match="discard_ratio"):
        rollout([attention], config, discard_ratio=1.0)
    with pytest.raises(ValueError, match="expected \\(batch, heads, 5, 5\\)"):
        rollout([attention[:, :, :4, :4]], config)


@pytest.mark.parametrize("pool", POOLS)
def test_per_head_attention_maps(pool: dict) -> None:
    model = uniform_attention_model(**pool)
    maps = head_attention(model, images_for(model, 3))
    assert maps.shape == (3, 2, 2, 6)
    torch.testing.assert_close(maps, torch.full((3, 2, 2, 6), 1 / 12))
    one = head_attention(one_patch_attention_model(4, **pool), images_for(model))
    assert bool((one[:, :, 0, 4] > 0.999).all())


def test_uniform_attention_gives_the_mean_pairwise_patch_distance() -> None:
    model = uniform_attention_model()
    distances = mean_attention_distance(model, images_for(model))
    assert distances.shape == (2, 2)  # (depth, heads)
    # Patch centres 4 pixels apart in rows and 2 in columns; the mean over all ordered pairs (self included).
    centres = [(4 * r, 2 * c) for r in range(2) for c in range(6)]
    expected = sum(math.dist(a, b) for a, b in itertools.product(centres, centres)) / len(centres) ** 2
    torch.testing.assert_close(distances, torch.full((2, 2), expected))
    # Attention to one patch only: the mean distance of every patch from patch 7 (row 1, column 1).
    to_seven = mean_attention_distance(one_patch_attention_model(7), images_for(model))
    expected = sum(math.dist(a, centres[7]) for a in centres) / len(centres)
    torch.testing.assert_close(to_seven, torch.full((2, 2), expected), atol=1e-3, rtol=0)


def test_sincos_positions_are_most_similar_to_themselves() -> None:
    model = VisionTransformer(**{**GRID, "image_size": (20, 24), "hidden_dim": 32}, pos_embed="sincos")
    similarity = position_similarity(model)
    gh, gw = model.config.grid_size
    assert similarity.shape == (gh, gw, gh, gw) == (5, 12, 5, 12)
    for r, c in itertools.product(range(gh), range(gw)):
        assert divmod(int(similarity[r, c].flatten().argmax()), gw) == (r, c)
        assert similarity[r, c, r, c].item() == pytest.approx(1.0)


def test_position_similarity_is_the_cosine_similarity_of_learned_vectors() -> None:
    from sklearn.metrics.pairwise import cosine_similarity

    torch.manual_seed(0)
    model = VisionTransformer(**GRID)
    expected = cosine_similarity(model.pos_embed.detach()[0, 1:].numpy())
    np.testing.assert_allclose(position_similarity(model).reshape(12, 12).numpy(), expected, atol=1e-6)


def test_embedding_filters_are_sklearns_principal_components() -> None:
    from sklearn.decomposition import PCA

    torch.manual_seed(0)
    model = VisionTransformer(**{**GRID, "in_channels": 3, "hidden_dim": 32})
    filters = embedding_filters(model, k=5)
    assert filters.shape == (5, 3, 4, 2)
    weights = model.patch_embed.proj.weight.detach().flatten(1).double().numpy()
    expected = PCA(n_components=5).fit(weights).components_
    ours = filters.flatten(1).double().numpy()
    np.testing.assert_allclose(np.abs((ours * expected).sum(axis=1)), np.ones(5), atol=1e-5)  # same axes, any sign
    with pytest.raises(ValueError, match="k must be between 1 and 24"):
        embedding_filters(model, k=25)


@pytest.mark.parametrize("pool", POOLS)
def test_grad_cam_equals_pytorch_grad_cam(pool: dict) -> None:
    """pytorch-grad-cam with a reshape function written for vitkit gives the same maps (it scales them to [0, 1])."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    # Patches of one pixel, so that pytorch-grad-cam's resize to the image size leaves the patch grid as it is.
    torch.manual_seed(0)
    model = VisionTransformer(image_size=(4, 6), patch_size=1, in_channels=1, num_classes=3, hidden_dim=16, depth=3,
                              num_heads=2, mlp_dim=32, **pool).eval()  # fmt: skip
    images = images_for(model, 3)
    prefix = model.config.num_prefix_tokens

    def to_grid(tokens: torch.Tensor) -> torch.Tensor:
        return tokens[:, prefix:].reshape(tokens.shape[0], 4, 6, -1).permute(0, 3, 1, 2)

    def scaled(cam: np.ndarray) -> np.ndarray:  # pytorch-grad-cam's scaling to [0, 1] (of each map)
        cam = cam - cam.min(axis=(1, 2), keepdims=True)
        return cam / (1e-7 + cam.max(axis=(1, 2), keepdims=True))

    with GradCAM(model, target_layers=[model.blocks[-1].norm1], reshape_transform=to_grid) as peer:
        for target in (None, 2):
            theirs = peer(images, targets=None if target is None else [ClassifierOutputTarget(target)] * 3)
            ours = grad_cam(model, images, target).numpy()
            # It scales once per target layer and again after averaging the layers (here one).
            np.testing.assert_allclose(scaled(scaled(ours)), theirs, atol=1e-6)


def test_grad_cam_targets_are_checked() -> None:
    model = uniform_attention_model()
    images = images_for(model)
    assert grad_cam(model, images, target=[0, 2]).shape == (2, 2, 6)
    with pytest.raises(ValueError, match="out of range"):
        grad_cam(model, images, target=3)
    with pytest.raises(ValueError, match="one per image"):
        grad_cam(model, images, target=[0, 1, 2])


def test_maps_leave_the_model_in_its_mode() -> None:
    model = uniform_attention_model(dropout=0.1).train()
    attention_rollout(model, images_for(model))
    grad_cam(model, images_for(model))
    assert model.training
