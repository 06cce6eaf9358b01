"""vitkit.optimize: each option for real, against the plain float32 model or a hand-worked case."""

from __future__ import annotations

import weakref

import pytest
import torch

import vitkit
from vitkit import VisionTransformer
from vitkit.optimize import default_tome
from vitkit.optimize.fuse import FusedSelfAttention, fuse_qkv
from vitkit.optimize.tome import ProportionalAttention, TokenSizes, merge_tokens

DIGIT_SHAPE = dict(image_size=8, patch_size=2, in_channels=1, num_classes=10, hidden_dim=32, depth=2, num_heads=2)


def random_model(**overrides: object) -> VisionTransformer:
    torch.manual_seed(0)
    return VisionTransformer(**{**DIGIT_SHAPE, "mlp_dim": 64, **overrides}).eval()


def agreement(model: torch.nn.Module, reference: torch.Tensor, images: torch.Tensor) -> float:
    with torch.inference_mode():
        return (model(images).argmax(dim=1) == reference).float().mean().item()


@pytest.mark.parametrize("overrides", [{}, {"qkv_bias": False}, {"pool": "mean", "class_token": False}])
def test_exact_is_fused_qkv_and_matches_plain(overrides: dict) -> None:
    model = random_model(**overrides)
    images = torch.randn(5, 1, 8, 8)
    fast = vitkit.optimize(model, exact=True)
    assert all(isinstance(block.attn, FusedSelfAttention) for block in fast.blocks)
    assert fast.config == model.config
    assert not any(p.requires_grad for p in fast.parameters())  # the stacked q/k/v layer included
    with torch.inference_mode():
        torch.testing.assert_close(fast(images), model(images), atol=1e-5, rtol=0)
    for plain, fused in zip(model.get_attention_maps(images), fast.get_attention_maps(images)):
        torch.testing.assert_close(fused, plain, atol=1e-6, rtol=0)
    # The original keeps its three separate layers for training.
    assert hasattr(model.blocks[0].attn, "q") and model.blocks[0].attn.q.weight.requires_grad


def test_merge_tokens_hand_worked() -> None:
    # Tokens 0..4 alternate between set A (0, 2, 4) and set B (1, 3); token 0 is the protected CLS token.
    # Token 4's key points where token 3's does, so with r=1 token 4 is averaged into token 3.
    x = torch.tensor([[[0.0], [1.0], [2.0], [3.0], [4.0]]])
    keys = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, -1.0], [-1.0, 0.2], [-1.0, 0.25]]])
    merged, sizes = merge_tokens(x, torch.ones(1, 5, 1), keys, r=1, protect_first=True)
    assert merged.flatten().tolist() == [0.0, 2.0, 1.0, 3.5]  # kept A tokens in order, then B with the merge
    assert sizes.flatten().tolist() == [1.0, 1.0, 1.0, 2.0]
    # A second merge weighs by size: value 1 (size 1) into value 3.5 (size 2) gives (1 + 2 * 3.5) / 3.
    keys = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [-1.0, 0.1]]])
    merged, sizes = merge_tokens(merged, sizes, keys, r=1, protect_first=True)
    assert merged.flatten().tolist() == pytest.approx([0.0, 2.0, 8 / 3]) and sizes.flatten().tolist() == [1, 1, 3]


def test_merge_tokens_keeps_total_size_and_mass() -> None:
    torch.manual_seed(0)
    x, keys, sizes = torch.randn(3, 17, 8), torch.randn(3, 17, 4), torch.randint(1, 4, (3, 17, 1)).float()
    merged, new_sizes = merge_tokens(x, sizes, keys, r=5, protect_first=True)
    assert merged.shape == (3, 12, 8)
    torch.testing.assert_close(new_sizes.sum(dim=1), sizes.sum(dim=1))
    torch.testing.assert_close((merged * new_sizes).sum(dim=1), (x * sizes).sum(dim=1))
    torch.testing.assert_close(merged[:, 0], x[:, 0])  # CLS untouched and first


def test_proportional_attention_equals_duplicated_tokens() -> None:
    """A token that stands for 2 patches gets the attention two identical tokens would get."""
    attention = fuse_qkv(random_model()).blocks[0].attn
    sizes = TokenSizes()
    proportional = ProportionalAttention(attention, sizes)
    x = torch.randn(2, 4, 32)
    sizes.sizes = torch.tensor([1.0, 1.0, 2.0, 1.0]).expand(2, 4)[..., None]
    with torch.inference_mode():
        duplicated = torch.cat([x, x[:, 2:3]], dim=1)
        torch.testing.assert_close(proportional(x), attention(duplicated)[:, :4], atol=1e-5, rtol=0)
        _, weights = proportional(x, return_attention=True)
        _, plain = attention(duplicated, return_attention=True)
    torch.testing.assert_close(weights[..., 2], plain[..., :4, 2] + plain[..., :4, 4], atol=1e-6, rtol=0)


def test_tome_r0_equals_plain() -> None:
    model, images = random_model(), torch.randn(4, 1, 8, 8)
    with torch.inference_mode():
        torch.testing.assert_close(vitkit.optimize(model, int8=False, tome=0)(images), model(images), atol=1e-5, rtol=0)


def test_merging_block_frees_attention_output_and_keys_before_its_mlp_runs() -> None:
    block = vitkit.optimize(random_model(), int8=False, tome=2).blocks[0]
    attend, held, alive = block.attn.attend, [], []

    def recording_attend(*args: object) -> tuple:
        out, keys, attention = attend(*args)
        held.extend([weakref.ref(out), weakref.ref(keys)])
        return out, keys, attention

    block.attn.attend = recording_attend
    block.mlp.register_forward_pre_hook(lambda module, args: alive.extend(ref() is not None for ref in held))
    with torch.inference_mode():
        assert block(torch.randn(2, 17, 32)).shape == (2, 15, 32)  # 2 tokens merged
    assert alive == [False, False]


def test_tome_shrinks_tokens_and_keeps_attention_maps(trained_digits_model: VisionTransformer, digits: tuple) -> None:
    images, _ = digits
    fast = vitkit.optimize(trained_digits_model, int8=False, tome=3)
    maps = fast.get_attention_maps(images[:4])
    assert [m.shape[-1] for m in maps] == [17, 14]  # 3 tokens merged in block 1
    for attention in maps:
        torch.testing.assert_close(attention.sum(dim=-1), torch.ones(attention.shape[:-1]))
    with torch.inference_mode():
        logits = fast(images[:4])
        assert logits.shape == (4, 10)
        # The forward after the maps uses fresh sizes: calling twice gives the same logits.
        torch.testing.assert_close(fast(images[:4]), logits)


@pytest.mark.parametrize(
    ("options", "bar"),
    [({}, 0.97), ({"bf16": True}, 0.98), ({"int8": False, "tome": 2}, 0.97), ({"tome": 2}, 0.95)],
)
def test_inexact_options_agree_with_float32(
    trained_digits_model: VisionTransformer, digits: tuple, options: dict, bar: float
) -> None:
    images, labels = digits
    with torch.inference_mode():
        reference = trained_digits_model(images).argmax(dim=1)
    assert (reference == labels).float().mean() > 0.7  # the model learned something worth agreeing with
    fast = vitkit.optimize(trained_digits_model, **options)
    assert fast.config == trained_digits_model.config
    assert agreement(fast, reference, images) >= bar
    assert len(fast.get_attention_maps(images[:2])) == 2


def test_default_is_fused_int8_and_merges_a_quarter_of_the_patches_in_large_models() -> None:
    assert default_tome(vitkit.get_config("vit_base_patch16_224")) == 4  # 196 patches // 4 // 12 blocks
    assert default_tome(vitkit.get_config("vit_large_patch16_224")) == 2  # 196 // 4 // 24
    assert default_tome(vitkit.get_config("vit_small_patch16_224")) == 0  # 384 x 197: merging cost more than it saved
    assert default_tome(vitkit.get_config("vit_small_patch16_224", image_size=384)) == 12  # 384 x 577: it pays again
    assert default_tome(vitkit.get_config("vit_tiny_patch16_224", image_size=384)) == 0  # 192 x 577
    assert default_tome(vitkit.get_config("vit_digits")) == 0
    assert default_tome(vitkit.get_config("vit_base_patch16_224", pool="mean", class_token=False)) == 0
    large = random_model(image_size=64, hidden_dim=160)  # 160 wide x 1,025 tokens > 768 x 197
    assert [block.r for block in vitkit.optimize(large).blocks] == [128, 128]  # 1,024 patches // 4 // 2 blocks
    model = random_model()
    fast = vitkit.optimize(model)
    assert not hasattr(fast.blocks[0], "r")  # 32 x 17: no merging
    assert not isinstance(fast.blocks[0].mlp.fc1, torch.nn.Linear)  # a quantized layer now
    assert isinstance(fast.head, torch.nn.Linear) and isinstance(model.blocks[0].mlp.fc1, torch.nn.Linear)


def test_int8_replaces_encoder_linears_only() -> None:
    model = random_model()
    fast = vitkit.optimize(model, tome=0)
    assert not isinstance(fast.blocks[0].mlp.fc1, torch.nn.Linear)  # a quantized layer now
    assert isinstance(fast.head, torch.nn.Linear) and isinstance(model.blocks[0].mlp.fc1, torch.nn.Linear)


def test_torchao_int8_agrees(trained_digits_model: VisionTransformer, digits: tuple) -> None:
    images, _ = digits
    with torch.inference_mode():
        reference = trained_digits_model(images).argmax(dim=1)
    assert agreement(vitkit.optimize(trained_digits_model, int8_backend="torchao"), reference, images) >= 0.97


def test_onnxruntime_session_matches(trained_digits_model: VisionTransformer, digits: tuple) -> None:
    images, _ = digits
    with torch.inference_mode():
        expected = trained_digits_model(images)
    fp32 = vitkit.optimize(trained_digits_model, onnxruntime=True, int8=False)
    torch.testing.assert_close(fp32(images), expected, atol=1e-4, rtol=1e-4)
    assert fp32.config == trained_digits_model.config and fp32.num_classes == 10
    assert len(fp32.get_attention_maps(images[:2])) == 2
    int8 = vitkit.optimize(trained_digits_model, onnxruntime=True)
    assert agreement(int8, expected.argmax(dim=1), images) >= 0.97
    with pytest.raises(ValueError, match="expected 1 input channels"):
        fp32(torch.zeros(1, 3, 8, 8))


def test_compile_exact() -> None:
    model, images = random_model(depth=1), torch.randn(3, 1, 8, 8)
    fast = vitkit.optimize(model, exact=True, compile=True)
    with torch.inference_mode():
        torch.testing.assert_close(fast(images), model(images), atol=1e-5, rtol=0)
    assert fast.config == model.config


def test_bad_options_are_errors() -> None:
    model = random_model()
    with pytest.raises(ValueError, match="exact=True keeps float32"):
        vitkit.optimize(model, exact=True, int8=True)
    with pytest.raises(ValueError, match="int8 or bf16"):
        vitkit.optimize(model, int8=True, bf16=True)
    with pytest.raises(ValueError, match="tome must be"):
        vitkit.optimize(model, tome=-1)
    with pytest.raises(ValueError, match="expects a vitkit VisionTransformer"):
        vitkit.optimize(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="int8 backend"):
        vitkit.optimize(model, int8_backend="tensorrt")
