"""Named configurations and their parameter counts."""

import pytest
import torch

import vitkit

# Published counts (1,000 classes), as timm reports them.
PUBLISHED = {
    "vit_tiny_patch16_224": 5_717_416,
    "vit_small_patch16_224": 22_050_664,
    "vit_small_patch32_224": 22_878_952,
    "vit_base_patch16_224": 86_567_656,
    "vit_base_patch32_224": 88_224_232,
    "vit_large_patch16_224": 304_326_632,
    "vit_large_patch32_224": 306_535_400,
    "vit_huge_patch14_224": 632_045_800,
    "vit_giant_patch14_224": 1_012_611_432,
    "vit_gigantic_patch14_224": 1_844_440_680,
}


def test_list_models_has_the_paper_sizes_and_small_ones():
    names = vitkit.list_models()
    assert set(PUBLISHED) <= set(names)
    assert {"vit_digits", "vit_pico_patch4_28", "vit_pico_patch7_28", "vit_nano_patch4_32"} <= set(names)
    assert names == sorted(names)


@pytest.mark.parametrize("name, count", sorted(PUBLISHED.items()))
def test_parameter_counts_equal_published(name, count):
    assert vitkit.count_parameters(name) == count


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_parameter_counts_equal_timm(name):
    timm = pytest.importorskip("timm")
    with torch.device("meta"):
        reference = timm.create_model(name, num_classes=1000)
    assert vitkit.count_parameters(name) == sum(p.numel() for p in reference.parameters())


def meta_model_count(config: vitkit.ViTConfig) -> int:
    """Parameters of the model itself, built on the meta device (no memory)."""
    with torch.device("meta"):
        model = vitkit.VisionTransformer(config)
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", vitkit.list_models())
def test_counting_from_the_sizes_equals_counting_the_built_model(name):
    assert vitkit.count_parameters(name) == meta_model_count(vitkit.get_config(name))


@pytest.mark.parametrize(
    "changes",
    [
        dict(pos_embed="sincos"),  # a buffer: no position parameters
        dict(class_token=False, pool="mean"),
        dict(qkv_bias=False),
        dict(fc_norm=True, pre_logits_dim=48),
        dict(num_classes=0),
        dict(image_size=(32, 48), patch_size=(8, 4), in_channels=1),
        dict(patch_embed="shifted", locality_attention=True),
        dict(conv_stem=2, pool="seq"),
        dict(conv_stem=1, patch_embed="shifted", in_channels=1),
    ],
)
def test_counting_from_the_sizes_follows_every_architectural_choice(changes):
    config = vitkit.get_config("vit_nano_patch4_32", **changes)
    assert config.num_parameters == meta_model_count(config)
    assert config.num_parameters != vitkit.get_config("vit_nano_patch4_32").num_parameters


def test_create_model_with_overrides():
    model = vitkit.create_model("vit_tiny_patch16_224", num_classes=10, image_size=32, pos_embed="sincos")
    assert model.num_classes == 10 and model.image_size == (32, 32) and model.config.grid_size == (2, 2)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)
    base = vitkit.get_config("vit_base_patch16_224")
    assert (base.hidden_dim, base.depth, base.num_heads, base.mlp_dim, base.patch_size) == (768, 12, 12, 3072, (16, 16))


def test_unknown_model_name_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown model 'vit_gigantic'.*vit_base_patch16_224"):
        vitkit.create_model("vit_gigantic")


def test_registry_entries_are_not_shared_state():
    vitkit.create_model("vit_digits", num_classes=4)
    assert vitkit.get_config("vit_digits").num_classes == 10
