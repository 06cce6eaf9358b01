"""The explanation arrays on constructed models and attention whose answers are known by hand."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from vitkit import VisionTransformer
from vitkit.explain import (
    attention_attribution,
    attention_rollout,
    attribution,
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


def test_attribution_on_a_hand_worked_case() -> None:
    """Two blocks over [CLS, p0, p1], two heads; the relevance worked out by hand from R <- R + mean_h((g A)^+) R."""
    config = VisionTransformer(image_size=(2, 4), patch_size=2, in_channels=1, num_classes=2, hidden_dim=8, depth=2,
                               num_heads=2, mlp_dim=8).config  # fmt: skip
    first = torch.tensor([[0.2, 0.5, 0.3], [0.1, 0.6, 0.3], [0.3, 0.3, 0.4]])
    first_gradient = torch.tensor([[1.0, 1.0, -1.0], [0.0, 1.0, 2.0], [1.0, 0.0, 0.0]])
    # Head 0: (g A)^+ = [[.2 .5 0] [0 .6 .6] [.3 0 0]]; head 1 has the opposite gradient: [[0 0 .3] [0 0 0] [0 0 0]].
    # Mean: [[.1 .25 .15] [0 .3 .3] [.15 0 0]], so R1 = I + that = [[1.1 .25 .15] [0 1.3 .3] [.15 0 1]].
    attentions = [torch.stack([first, first])[None], torch.full((1, 2, 3, 3), 0.5)]
    second_gradient = torch.zeros(3, 3)
    second_gradient[0, 1] = 1.0  # both heads: Abar2 has .5 at (CLS, p0) only
    gradients = [torch.stack([first_gradient, -first_gradient])[None], torch.stack([second_gradient] * 2)[None]]
    # R2 = R1 + Abar2 R1: the CLS row gains .5 * R1's p0 row, [1.1 .9 .3]; over the patches, [.9 .3] / 1.2.
    torch.testing.assert_close(attribution(attentions, gradients, config).flatten(), torch.tensor([0.75, 0.25]))
    # Mean pooling reads the patch rows of R2 (= R1's: [0 1.3 .3] and [.15 0 1]) over the patches: [1.3 1.3] / 2.6.
    mean_config = config.replace(pool="mean")
    torch.testing.assert_close(attribution(attentions, gradients, mean_config).flatten(), torch.tensor([0.5, 0.5]))
    # Gradients that lower the score everywhere leave no relevance: a map of zeros, not a division by zero.
    negative = [-g.abs() for g in gradients]
    assert attribution(attentions, negative, config).abs().sum().item() == 0.0
    with pytest.raises(ValueError, match="one gradient per block"):
        attribution(attentions, gradients[:1], config)


@pytest.mark.parametrize("pool", POOLS)
def test_attention_attribution_weights_the_models_own_attention_by_its_gradient(pool: dict) -> None:
    """A one-block model written out by hand with its attention as a leaf: the same attention, gradient and map."""
    torch.manual_seed(0)
    model = VisionTransformer(**{**GRID, **pool, "depth": 1}).eval()
    images, target = images_for(model, 3), torch.tensor([2, 0, 1])
    block, prefix = model.blocks[0], model.config.num_prefix_tokens
    tokens = model.embed(images).detach()
    normed = block.norm1(tokens)
    heads = [layer(normed).reshape(3, -1, 2, 8).transpose(1, 2) for layer in (block.attn.q, block.attn.k, block.attn.v)]
    attention = (heads[0] @ heads[1].transpose(-2, -1) / math.sqrt(8)).softmax(dim=-1).detach().requires_grad_(True)
    mixed = tokens + block.attn.proj((attention @ heads[2]).transpose(1, 2).reshape(3, -1, 16))
    final = model.norm(mixed + block.mlp(block.norm2(mixed)))
    pooled = final[:, 0] if pool["pool"] == "cls" else final[:, prefix:].mean(dim=1)
    score = model.head(pooled).gather(1, target[:, None]).sum()
    (gradient,) = torch.autograd.grad(score, attention)
    relevance = (gradient * attention).clamp_min(0).mean(dim=1).detach()  # + identity, whose patch part is uniform
    if pool["pool"] == "cls":
        expected = relevance[:, 0, prefix:]
    else:
        expected = relevance[:, prefix:, prefix:].mean(dim=1) + 1 / model.config.num_patches
    expected = expected / expected.sum(dim=1, keepdim=True)
    ours = attention_attribution(model, images, target)
    assert ours.shape == (3, 2, 6)
    torch.testing.assert_close(ours.flatten(1), expected, rtol=1e-4, atol=1e-6)
    # The default target is the predicted class.
    predicted = model(images).argmax(dim=1)
    torch.testing.assert_close(attention_attribution(model, images), attention_attribution(model, images, predicted))
