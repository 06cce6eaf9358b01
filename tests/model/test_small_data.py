"""The options for small data sets: shifted patch tokenization, locality self-attention, a convolutional stem and
sequence pooling, each checked against an independent computation, trained a few steps and saved and loaded."""

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F

from vitkit import VisionTransformer
from vitkit.model import ViTConfig
from vitkit.optimize import optimize

SMALL = dict(image_size=8, patch_size=2, in_channels=1, num_classes=3, hidden_dim=32, depth=2, num_heads=4, mlp_dim=64)
OPTIONS = {
    "shifted patches": dict(patch_embed="shifted"),
    "locality attention": dict(locality_attention=True),
    "conv stem": dict(conv_stem=2),
    "sequence pooling": dict(pool="seq", class_token=False),
    "all four": dict(patch_embed="shifted", locality_attention=True, conv_stem=1, pool="seq"),
}


def shifted(images: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """The image read (dy, dx) pixels away, zeros where that falls outside: torch.roll, then what wrapped blanked."""
    height, width = images.shape[-2:]
    rows, cols = torch.arange(height) + dy, torch.arange(width) + dx
    inside = ((rows >= 0) & (rows < height))[:, None] & ((cols >= 0) & (cols < width))[None, :]
    return torch.roll(images, shifts=(-dy, -dx), dims=(2, 3)) * inside


# --- shifted patch tokenization -------------------------------------------------------------------


def test_shifted_patches_stack_the_image_and_its_four_diagonal_half_patch_shifts() -> None:
    torch.manual_seed(0)
    model = VisionTransformer(**{**SMALL, "image_size": (8, 12), "patch_size": (4, 2), "in_channels": 3},
                              patch_embed="shifted").eval()  # fmt: skip
    embed = model.patch_embed
    images = torch.randn(2, 3, 8, 12)
    views = embed.shifted_views(images)
    assert views.shape == (2, 15, 8, 12)
    # Half a patch is 2 rows and 1 column: up-left, up-right, down-left, down-right.
    expected = [images] + [shifted(images, dy, dx) for dy, dx in ((-2, -1), (-2, 1), (2, -1), (2, 1))]
    for i, view in enumerate(expected):
        assert torch.equal(views[:, 3 * i : 3 * (i + 1)], view), f"view {i}"
    assert torch.equal(expected[4][0, :, 6:, :], torch.zeros(3, 2, 12))  # reads below the image: zeros
    assert torch.equal(expected[4][0, :, 0, 0], images[0, :, 2, 1])
    # Each token: its patch of the five views, flattened channel by channel, layer-normalised, projected.
    tokens = embed(images)
    assert tokens.shape == (2, 2 * 6, 32)
    for row, col in ((0, 0), (1, 4)):
        patch = views[1, :, 4 * row : 4 * row + 4, 2 * col : 2 * col + 2].flatten()
        normalised = F.layer_norm(patch, patch.shape, embed.norm.weight, embed.norm.bias, eps=1e-6)
        torch.testing.assert_close(tokens[1, 6 * row + col], embed.proj(normalised))


def test_shifted_patches_need_a_patch_that_halves() -> None:
    with pytest.raises(ValueError, match=r"patch_embed='shifted' shifts the image by half a patch.*\(4, 1\)"):
        ViTConfig(**{**SMALL, "patch_size": (4, 1)}, patch_embed="shifted")
    with pytest.raises(ValueError, match=r"patch_embed must be one of \('linear', 'shifted'\), got 'conv'"):
        ViTConfig(**SMALL, patch_embed="conv")


# --- locality self-attention ----------------------------------------------------------------------


def lsa_reference(attn: torch.nn.Module, x: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
    """Per head, softmax over the other tokens of q k^T / tau (the token itself left out by hand): (B, h, N, N)."""
    d, n = attn.head_dim, x.shape[1]
    probabilities = []
    for h in range(attn.num_heads):
        rows = slice(h * d, (h + 1) * d)
        q = x @ attn.q.weight[rows].T + attn.q.bias[rows]
        k = x @ attn.k.weight[rows].T + attn.k.bias[rows]
        p = torch.zeros(x.shape[0], n, n)
        for i in range(n):
            others = [j for j in range(n) if j != i]
            p[:, i, others] = torch.softmax(q[:, i : i + 1] @ k[:, others].transpose(1, 2) / temperature[h], dim=-1)[
                :, 0
            ]
        probabilities.append(p)
    return torch.stack(probabilities, dim=1)


def test_locality_attention_leaves_each_token_out_and_learns_a_temperature_per_head() -> None:
    torch.manual_seed(0)
    model = VisionTransformer(**SMALL, locality_attention=True).eval()
    attn = model.blocks[0].attn
    torch.testing.assert_close(attn.locality.temperature, torch.full((4,), math.sqrt(8)))  # sqrt(head_dim)
    x = torch.randn(2, 17, 32)
    with torch.no_grad():
        attn.locality.temperature.copy_(torch.tensor([0.5, 1.0, 3.0, 10.0]))
        out, probabilities = attn(x, return_attention=True)
        assert torch.equal(probabilities.diagonal(dim1=-2, dim2=-1), torch.zeros(2, 4, 17))
        torch.testing.assert_close(probabilities.sum(dim=-1), torch.ones(2, 4, 17))
        torch.testing.assert_close(probabilities, lsa_reference(attn, x, attn.locality.temperature))
        torch.testing.assert_close(attn(x), out, atol=1e-5, rtol=1e-5)  # the fused kernel computes the same
        for p in model.get_attention_maps(torch.randn(2, 1, 8, 8)):
            assert torch.equal(p.diagonal(dim1=-2, dim2=-1), torch.zeros(2, 4, 17))


def test_locality_attention_at_sqrt_d_is_plain_attention_without_the_diagonal() -> None:
    """With tau = sqrt(d), LSA's probabilities are plain attention's with the token itself removed and each row
    renormalised: p'_ij = p_ij / (1 - p_ii)."""
    torch.manual_seed(0)
    attn = VisionTransformer(**SMALL, locality_attention=True).blocks[0].attn.eval()
    plain = copy.deepcopy(attn)
    plain.locality = None
    x = torch.randn(2, 17, 32)
    with torch.no_grad():
        _, p = plain(x, return_attention=True)
        _, lsa = attn(x, return_attention=True)
    itself = p.diagonal(dim1=-2, dim2=-1)
    expected = (p / (1 - itself)[..., None]) * (1 - torch.eye(17))
    torch.testing.assert_close(lsa, expected, atol=1e-6, rtol=1e-5)


def test_locality_attention_needs_two_tokens_and_survives_the_fast_inference_path() -> None:
    with pytest.raises(ValueError, match="locality_attention masks each token's attention to itself"):
        ViTConfig(**{**SMALL, "patch_size": 8}, class_token=False, pool="mean", locality_attention=True)
    torch.manual_seed(0)
    model = VisionTransformer(**SMALL, locality_attention=True).eval()
    with torch.no_grad():
        model.blocks[1].attn.locality.temperature.mul_(0.5)
        images = torch.randn(3, 1, 8, 8)
        expected = model(images)
        torch.testing.assert_close(optimize(model, exact=True)(images), expected, atol=1e-5, rtol=1e-5)
        # Token merging keeps the temperatures and the mask: no token attends to itself, merged or not.
        merged = optimize(model, int8=False, tome=2)
        for p in merged.get_attention_maps(images):
            assert torch.equal(p.diagonal(dim1=-2, dim2=-1), torch.zeros_like(p.diagonal(dim1=-2, dim2=-1)))
        assert [p.shape[-1] for p in merged.get_attention_maps(images)] == [17, 15]


# --- convolutional stem ---------------------------------------------------------------------------


def test_conv_stem_keeps_the_patch_grid() -> None:
    torch.manual_seed(0)
    model = VisionTransformer(**{**SMALL, "image_size": (8, 12)}, conv_stem=3).eval()
    stem = model.patch_embed.stem
    assert sum(isinstance(m, torch.nn.Conv2d) for m in stem.modules()) == 3
    images = torch.randn(2, 1, 8, 12)
    assert stem(images).shape == (2, 16, 8, 12)  # half the token width, the image's size
    assert model.config.grid_size == (4, 6) and model.patch_embed(images).shape == (2, 24, 32)
    _, grids = model.forward_intermediates(images, indices=1)
    assert grids[0].shape == (2, 32, 4, 6)
    assert model.get_attention_maps(images)[0].shape == (2, 4, 25, 25)


def test_conv_stem_normalises_each_image_on_its_own() -> None:
    """GroupNorm, not BatchNorm: in training, an image's features do not depend on the batch it comes in."""
    torch.manual_seed(0)
    stem = VisionTransformer(**SMALL, conv_stem=2).patch_embed.stem.train()
    images = torch.randn(4, 1, 8, 8)
    together = stem(images)
    torch.testing.assert_close(torch.cat([stem(images[:1]), stem(images[1:])]), together)
    assert not list(stem.buffers())  # no running statistics: training and evaluation compute the same


def test_conv_stem_must_be_a_count() -> None:
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match=f"conv_stem must be an int >= 0 .*got {bad!r}"):
            ViTConfig(**SMALL, conv_stem=bad)


# --- sequence pooling -----------------------------------------------------------------------------


@torch.no_grad()
def test_sequence_pooling_is_a_learned_weighted_mean_of_the_patch_tokens() -> None:
    torch.manual_seed(0)
    model = VisionTransformer(**SMALL, pool="seq").eval()  # with a CLS token, which the pooling leaves out
    tokens = torch.randn(2, 17, 32)
    score = model.seq_pool.score
    weights = model.seq_pool.weights(tokens[:, 1:])
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(2))
    for b in range(2):
        scores = torch.tensor([float(score(tokens[b, 1 + i])) for i in range(16)])
        expected_weights = scores.exp() / scores.exp().sum()
        pooled = sum(w * t for w, t in zip(expected_weights, tokens[b, 1:]))
        torch.testing.assert_close(weights[b], expected_weights)
        torch.testing.assert_close(model.forward_head(tokens)[b], model.head(pooled))


def test_sequence_pooling_with_a_zero_scoring_layer_is_mean_pooling() -> None:
    torch.manual_seed(0)
    seq = VisionTransformer(**SMALL, pool="seq", class_token=False).eval()
    torch.nn.init.zeros_(seq.seq_pool.score.weight)
    torch.nn.init.normal_(seq.seq_pool.score.bias)  # the same score for every token: still uniform weights
    mean = VisionTransformer(**SMALL, pool="mean", class_token=False).eval()
    mean.load_state_dict({k: v for k, v in seq.state_dict().items() if not k.startswith("seq_pool.")})
    images = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(seq(images), mean(images))


# --- every option: config round trip, a few training steps, save and load ---------------------------


@pytest.mark.parametrize("options", OPTIONS.values(), ids=OPTIONS.keys())
def test_each_option_trains_and_saves_and_loads_exactly(options: dict, tmp_path) -> None:
    config = ViTConfig(**SMALL, **options)
    assert ViTConfig.from_dict(config.to_dict()) == config
    torch.manual_seed(0)
    model = VisionTransformer(config)
    images, labels = torch.randn(16, 1, 8, 8), torch.randint(0, 3, (16,))
    optimizer = torch.optim.AdamW(model.param_groups(0.05), lr=3e-3)
    losses = []
    for _ in range(12):
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.2, losses  # memorising 16 random labels: it learns
    model.eval().save_pretrained(tmp_path)
    loaded = VisionTransformer.from_pretrained(tmp_path).eval()
    assert loaded.config == config
    with torch.no_grad():
        assert torch.equal(loaded(images), model(images))


def test_config_files_without_the_options_load_with_them_off(tmp_path) -> None:
    torch.manual_seed(0)
    model = VisionTransformer(**SMALL).eval()
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    for key in ("patch_embed", "locality_attention", "conv_stem"):
        del saved[key]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    loaded = VisionTransformer.from_pretrained(tmp_path)
    assert (loaded.config.patch_embed, loaded.config.locality_attention, loaded.config.conv_stem) == (
        "linear",
        False,
        0,
    )
    assert loaded.config == model.config
