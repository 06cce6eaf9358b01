"""forward_intermediates: chosen blocks' token maps from one pass, checked against hooks and against timm."""

from __future__ import annotations

import pytest
import torch
from attention_reference import reference_attention

from vitkit import VisionTransformer

SMALL = dict(image_size=(8, 12), patch_size=(4, 2), in_channels=3, num_classes=5, hidden_dim=16, depth=3, num_heads=2,
             mlp_dim=32)  # fmt: skip


def block_outputs_by_hooks(model: VisionTransformer, images: torch.Tensor) -> list[torch.Tensor]:
    """Every block's output as forward hooks see it during an ordinary forward pass: the independent reference."""
    outputs: list[torch.Tensor] = []
    handles = [block.register_forward_hook(lambda _m, _i, out: outputs.append(out)) for block in model.blocks]
    try:
        model(images)
    finally:
        for handle in handles:
            handle.remove()
    return outputs


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_last_block_with_norm_equals_forward_features(pool: str) -> None:
    torch.manual_seed(0)
    model = VisionTransformer(**SMALL, pool=pool, class_token=pool == "cls").eval()
    images = torch.randn(2, 3, 8, 12)
    final, (last,) = model.forward_intermediates(images, indices=[-1], output_fmt="NLC", norm=True)
    features = model.forward_features(images)
    torch.testing.assert_close(last, features)
    torch.testing.assert_close(final, features)


@pytest.mark.parametrize("class_token", [True, False])
def test_intermediates_match_hooks_as_sequences_and_as_grids(class_token: bool) -> None:
    torch.manual_seed(0)
    model = VisionTransformer(**SMALL, class_token=class_token, pool="cls" if class_token else "mean").eval()
    images = torch.randn(2, 3, 8, 12)
    hooked = block_outputs_by_hooks(model, images)
    _, sequences = model.forward_intermediates(images, output_fmt="NLC")
    assert len(sequences) == 3
    for ours, theirs in zip(sequences, hooked):
        torch.testing.assert_close(ours, theirs)
    _, grids = model.forward_intermediates(images, indices=2)  # the last two blocks, as grids
    prefix = int(class_token)
    for grid, theirs in zip(grids, hooked[1:], strict=True):
        assert grid.shape == (2, 16, 2, 6)  # (B, D, gh, gw): 8/4 rows and 12/2 columns of patches
        # Patch (row r, column c) is token prefix + r * gw + c of the sequence.
        for r, c in [(0, 0), (0, 5), (1, 2)]:
            torch.testing.assert_close(grid[:, :, r, c], theirs[:, prefix + r * 6 + c])


def test_indices_pick_blocks_in_order_and_bad_ones_are_named() -> None:
    torch.manual_seed(0)
    model = VisionTransformer(**SMALL).eval()
    images = torch.randn(1, 3, 8, 12)
    hooked = block_outputs_by_hooks(model, images)
    _, picked = model.forward_intermediates(images, indices=[-1, 0], output_fmt="NLC")
    torch.testing.assert_close(picked[0], hooked[0])  # in block order, like timm
    torch.testing.assert_close(picked[1], hooked[2])
    assert model.forward_intermediates(images, indices=0)[1] == []
    with pytest.raises(ValueError, match="out of range"):
        model.forward_intermediates(images, indices=[3])
    with pytest.raises(ValueError, match="last 4 blocks"):
        model.forward_intermediates(images, indices=4)
    with pytest.raises(ValueError, match="output_fmt"):
        model.forward_intermediates(images, output_fmt="NHWC")


def timm_twin(model: VisionTransformer):
    """The same network built by timm, with vitkit's weights (timm fuses q, k, v into one qkv layer)."""
    import timm.models.vision_transformer as tv

    c = model.config
    twin = tv.VisionTransformer(
        img_size=c.image_size, patch_size=c.patch_size, in_chans=c.in_channels, num_classes=c.num_classes,
        embed_dim=c.hidden_dim, depth=c.depth, num_heads=c.num_heads, mlp_ratio=c.mlp_dim / c.hidden_dim,
    )  # fmt: skip
    state = dict(model.state_dict())
    for i in range(c.depth):
        prefix = f"blocks.{i}.attn."
        for kind in ("weight", "bias"):
            state[prefix + f"qkv.{kind}"] = torch.cat([state.pop(prefix + f"{name}.{kind}") for name in "qkv"])
    twin.load_state_dict(state)
    return twin.eval()


def test_intermediates_equal_timms() -> None:
    torch.manual_seed(0)
    model = VisionTransformer(**SMALL).eval()
    images = torch.randn(2, 3, 8, 12)
    twin = timm_twin(model)
    with torch.no_grad():
        for fmt in ("NCHW", "NLC"):
            for norm in (False, True):
                final, ours = model.forward_intermediates(images, indices=[0, 2], output_fmt=fmt, norm=norm)
                twin_final, theirs = twin.forward_intermediates(images, indices=[0, 2], output_fmt=fmt, norm=norm)
                torch.testing.assert_close(final, twin_final, atol=1e-5, rtol=0)
                for a, b in zip(ours, theirs, strict=True):
                    a = a[:, 1:] if fmt == "NLC" else a  # timm leaves the CLS token out of sequences too
                    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_attention_maps_come_from_the_one_forward_pass() -> None:
    torch.manual_seed(0)
    model = VisionTransformer(**SMALL).eval()
    images = torch.randn(2, 3, 8, 12)
    calls = []
    handles = [block.attn.q.register_forward_hook(lambda *_: calls.append(1)) for block in model.blocks]
    try:
        maps = model.get_attention_maps(images)
    finally:
        for handle in handles:
            handle.remove()
    assert len(calls) == 3  # each block's queries computed once: no second pass to read the probabilities
    # The pass that gives the maps is the model's own: the same block outputs as the ordinary forward.
    second = model.blocks[1]
    second_input = second.norm1(block_outputs_by_hooks(model, images)[0])
    with torch.no_grad():
        expected = reference_attention(second.attn, second_input)[1]
    torch.testing.assert_close(maps[1], expected, atol=1e-6, rtol=1e-5)
