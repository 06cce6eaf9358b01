"""timm <-> vitkit on randomly initialised timm ViTs: equal logits both ways, state dict files, clear errors."""

from __future__ import annotations

import pytest
import timm
import torch
from interop_helpers import TOLERANCE, max_logit_difference, random_images, randomise

from vitkit.interop import from_timm, to_timm
from vitkit.interop.timm import create_model_call

SMALL = dict(patch_size=8, embed_dim=32, depth=2, num_heads=4, mlp_ratio=2)
CASES = {
    # name, create_model keywords, image (height, width)
    "named-tiny": ("vit_tiny_patch16_224", dict(img_size=32, num_classes=10), (32, 32)),
    "test-vit": ("test_vit", dict(img_size=32, num_classes=4), (32, 32)),  # timm's own small named model
    "non-square": ("vit_base_patch16_224", dict(SMALL, img_size=(24, 40), num_classes=7), (24, 40)),
    "mean-fc-norm": ("vit_base_patch16_224", dict(SMALL, img_size=32, class_token=False, global_pool="avg"), (32, 32)),
    "mean-no-fc-norm": ("vit_base_patch16_224", dict(SMALL, img_size=32, global_pool="avg", fc_norm=False), (32, 32)),
    "no-qkv-bias": ("vit_base_patch16_224", dict(SMALL, img_size=48, qkv_bias=False, num_classes=3), (48, 48)),
}


def make_timm(case: str) -> tuple[torch.nn.Module, tuple[int, int]]:
    name, kwargs, size = CASES[case]
    return randomise(timm.create_model(name, pretrained=False, **kwargs)), size


@pytest.mark.parametrize("case", [case for case in CASES if case != "test-vit"])
def test_timm_to_vitkit_and_back_keeps_the_logits(case: str) -> None:
    peer, (height, width) = make_timm(case)
    images = random_images(3, height, width)
    model = from_timm(peer)
    assert max_logit_difference(model, peer, images) <= TOLERANCE
    state, kwargs = to_timm(model)
    back = timm.create_model("vit_base_patch16_224", pretrained=False, **kwargs)
    back.load_state_dict(state)
    assert max_logit_difference(back, peer, images) <= TOLERANCE


def test_timm_configuration_and_preprocessing_are_carried_over() -> None:
    peer, _ = make_timm("mean-fc-norm")
    config = from_timm(peer).config
    assert (config.pool, config.class_token, config.fc_norm, config.layer_norm_eps) == ("mean", False, True, 1e-6)
    assert (config.interpolation, config.crop_pct) == ("bicubic", 0.9)  # vit_base_patch16_224's pretrained_cfg
    assert config.mean == (0.5, 0.5, 0.5)


def test_a_timm_state_dict_needs_and_uses_the_architecture_name() -> None:
    peer, _ = make_timm("test-vit")
    state = peer.state_dict()
    with pytest.raises(ValueError, match="needs name="):
        from_timm(state)
    model = from_timm(state, name="test_vit")
    assert model.image_size == (32, 32) and model.num_classes == 4
    assert max_logit_difference(model, peer, random_images(2, 32, 32)) <= TOLERANCE


def test_a_state_dict_of_another_architecture_lists_the_bad_keys() -> None:
    peer, _ = make_timm("test-vit")
    with pytest.raises(
        ValueError,
        match=r"timm's vit_tiny_patch16_224: .*mismatched shapes: "
        r".*cls_token: weights \(1, 1, 64\) vs model \(1, 1, 192\)",
    ):
        from_timm(peer.state_dict(), name="vit_tiny_patch16_224")
    truncated = {k: v for k, v in peer.state_dict().items() if not k.startswith("blocks.5.")}
    with pytest.raises(ValueError, match=r"missing keys: \['blocks.5.attn.proj.bias'"):
        from_timm(truncated, name="test_vit")


def test_unsupported_timm_parts_are_named() -> None:
    peer = timm.create_model(
        "vit_base_patch16_224", pretrained=False, **SMALL, img_size=32, reg_tokens=4, init_values=1e-5
    )
    with pytest.raises(ValueError, match="register tokens.*LayerScale"):
        from_timm(peer)
    from timm.models.vision_transformer import ResPostBlock

    post_norm = timm.create_model("vit_base_patch16_224", pretrained=False, **SMALL, img_size=32, block_fn=ResPostBlock)
    with pytest.raises(ValueError, match="blocks other than timm's pre-norm Block"):
        from_timm(post_norm)  # same weight names, other logits: refused rather than converted
    with pytest.raises(ValueError, match="timm's resnet18 is a ResNet, not a VisionTransformer"):
        from_timm({}, name="resnet18")


def test_export_with_another_layer_norm_epsilon_prints_a_working_call() -> None:
    from vitkit import VisionTransformer

    torch.manual_seed(0)
    model = randomise(VisionTransformer(image_size=16, patch_size=8, hidden_dim=32, depth=1, num_heads=2, mlp_dim=64,
                                        num_classes=4, layer_norm_eps=1e-12))  # fmt: skip
    state, kwargs = to_timm(model)
    call = create_model_call(kwargs)
    assert "norm_layer=functools.partial(torch.nn.LayerNorm, eps=1e-12)" in call
    import functools  # noqa: F401  (the printed call uses it)

    back = eval(call)  # the printed line, run as a user would
    back.load_state_dict(state)
    assert max_logit_difference(back, model, random_images(2, 16, 16)) <= TOLERANCE


@pytest.mark.parametrize("case", ["named-tiny", "no-qkv-bias"])
def test_a_training_pass_matches_timms_logits_and_gradients(case: str) -> None:
    """The gradients of the three q, k, v layers are those of timm's fused qkv layer, split in three."""
    peer, (height, width) = make_timm(case)
    model = from_timm(peer).train()
    peer.train()
    images = random_images(3, height, width)
    logits, peer_logits = model(images), peer(images)
    torch.testing.assert_close(logits, peer_logits, atol=TOLERANCE, rtol=0)
    logits.square().sum().backward()
    peer_logits.square().sum().backward()
    for ours, theirs in zip(model.blocks, peer.blocks):
        attn = ours.attn
        for part in ("weight", "bias") if attn.q.bias is not None else ("weight",):
            grads = torch.cat([getattr(layer, part).grad for layer in (attn.q, attn.k, attn.v)])
            torch.testing.assert_close(grads, getattr(theirs.attn.qkv, part).grad, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(ours.mlp.fc1.weight.grad, theirs.mlp.fc1.weight.grad, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(
        model.patch_embed.proj.weight.grad, peer.patch_embed.proj.weight.grad, atol=1e-5, rtol=1e-4
    )
