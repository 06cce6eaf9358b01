"""LoRA adapters (vitkit.model.lora) against peft on the same weights, their size, and merging them away."""

from __future__ import annotations

import copy

import pytest
import torch

from vitkit.model import VisionTransformer, create_model
from vitkit.model.lora import LoRALinear, add_lora, lora_layers, merge_lora

TINY = dict(image_size=16, patch_size=4, in_channels=3, num_classes=5, hidden_dim=32, depth=2, num_heads=2, mlp_dim=64)


def adapted_model(targets: tuple[str, ...]) -> tuple[VisionTransformer, VisionTransformer]:
    """(base, the base with rank-4 alpha-8 adapters on ``targets`` whose B is random, so that they change logits)."""
    torch.manual_seed(0)
    base = VisionTransformer(**TINY).eval()
    adapted = copy.deepcopy(base)
    add_lora(adapted, rank=4, alpha=8.0, targets=targets)
    with torch.no_grad():
        for layer in lora_layers(adapted).values():
            layer.lora_B.normal_(std=0.1)
    return base, adapted


def test_adapted_logits_equal_peft_on_the_same_weights() -> None:
    from peft import LoraConfig, get_peft_model

    targets = ("q", "v", "fc1", "fc2")
    base, adapted = adapted_model(targets)
    plain = copy.deepcopy(base)  # get_peft_model adds its adapters to the model it is given
    reference = get_peft_model(
        base, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=list(targets), bias="none")
    ).eval()
    peft_layers = {name: module for name, module in reference.named_modules() if hasattr(module, "lora_A")}
    assert len(peft_layers) == len(lora_layers(adapted)) == 2 * len(targets)
    for name, layer in lora_layers(adapted).items():
        theirs = peft_layers[f"base_model.model.{name}"]
        theirs.lora_A["default"].weight.data.copy_(layer.lora_A)
        theirs.lora_B["default"].weight.data.copy_(layer.lora_B)
    images = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        ours, expected, unadapted = adapted(images), reference(images), plain(images)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)
    assert (ours - unadapted).abs().max() > 1e-3  # the adapters do change the logits


def test_a_fresh_adapter_leaves_the_model_as_it_was_and_trains_only_a_and_b() -> None:
    torch.manual_seed(0)
    base = VisionTransformer(**TINY).eval()
    adapted = copy.deepcopy(base)
    add_lora(adapted, rank=2, targets=("k", "proj"))
    images = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(adapted(images), base(images))  # B starts at zero
    layer = adapted.blocks[0].attn.k
    assert isinstance(layer, LoRALinear) and layer.scaling == 1.0  # alpha defaults to the rank
    assert not layer.base.weight.requires_grad and layer.lora_A.requires_grad and layer.lora_B.requires_grad
    assert not isinstance(adapted.blocks[0].attn.q, LoRALinear)


def test_merged_model_equals_the_adapted_one_and_is_plain() -> None:
    _, adapted = adapted_model(("q", "k", "v", "proj", "fc1", "fc2"))
    merged = merge_lora(adapted)
    assert not lora_layers(merged) and set(merged.state_dict()) == set(VisionTransformer(**TINY).state_dict())
    images = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(merged(images), adapted(images), atol=1e-5, rtol=0)
    assert lora_layers(adapted)  # the adapted model is left as it was


def test_rank_4_trains_under_5_percent_of_a_vit_ti_16() -> None:
    model = create_model("vit_tiny_patch16_224")
    model.requires_grad_(False)
    add_lora(model, rank=4)  # q and v
    model.head.requires_grad_(True)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    # 12 blocks x 2 layers x 4 x (192 + 192) adapter weights, plus the 1000-class head (192 x 1000 + 1000)
    assert trainable == 12 * 2 * 4 * (192 + 192) + 193_000
    assert trainable / total < 0.05


def test_unknown_targets_are_explained() -> None:
    with pytest.raises(ValueError, match=r"LoRA targets must be names from \['q', 'k', 'v', 'proj', 'fc1', 'fc2'\]"):
        add_lora(VisionTransformer(**TINY), rank=2, targets=("qkv",))
