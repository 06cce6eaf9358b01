"""Models with the options for small data sets: ONNX holds them all; the peer libraries' ViTs hold none, and saying
so names the option."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from interop_helpers import randomise

from vitkit import VisionTransformer
from vitkit.interop import to_timm, to_torchvision

ALL_OPTIONS = dict(patch_embed="shifted", locality_attention=True, conv_stem=1, pool="seq")


def small_model(**options: object) -> VisionTransformer:
    torch.manual_seed(0)
    return VisionTransformer(image_size=16, patch_size=4, num_classes=3, hidden_dim=32, depth=2, num_heads=4,
                             mlp_dim=64, **options)  # fmt: skip


@pytest.mark.parametrize(
    "option, named",
    [
        (dict(patch_embed="shifted"), r"shifted patch tokenization \(patch_embed='shifted'\)"),
        (dict(locality_attention=True), r"locality self-attention \(locality_attention\)"),
        (dict(conv_stem=2), r"a convolutional stem \(conv_stem\)"),
        (dict(pool="seq"), r"sequence pooling \(pool='seq'\)"),
    ],
)
def test_peers_refuse_each_option_by_name(option: dict, named: str, tmp_path: Path) -> None:
    model = small_model(**option)
    with pytest.raises(ValueError, match=f"timm's VisionTransformer cannot hold this model: {named}$"):
        to_timm(model)
    with pytest.raises(ValueError, match=f"torchvision's VisionTransformer cannot hold this model: {named}$"):
        to_torchvision(model)
    from vitkit.interop import to_transformers

    with pytest.raises(ValueError, match=f"ViTForImageClassification cannot hold this model: {named}$"):
        to_transformers(model, tmp_path)
    assert not any(tmp_path.iterdir())


def test_onnx_holds_every_option_at_its_size_and_at_another(tmp_path: Path) -> None:
    from vitkit.interop.export import check_onnx, export_onnx

    model = randomise(small_model(**ALL_OPTIONS))
    path = export_onnx(model, tmp_path / "vit.onnx", dynamic_image_size=True)
    differences = check_onnx(model, path, image_sizes=((12, 20),))
    assert set(differences) == {"batch 1", "batch 5", "image 12x20"}, differences
    assert max(differences.values()) <= 1e-4, differences
