"""torchvision's VisionTransformer <-> vitkit on random models: logits both ways, pre-logits, state dict files."""

from __future__ import annotations

import pytest
import torch
from interop_helpers import TOLERANCE, max_logit_difference, random_images, randomise
from torchvision.models import vit_b_16
from torchvision.models.vision_transformer import VisionTransformer as TorchvisionViT

from vitkit.interop import from_torchvision, to_torchvision

SMALL = dict(patch_size=8, num_layers=2, num_heads=4, hidden_dim=32, mlp_dim=64)
CASES = {
    "non-224": lambda: TorchvisionViT(image_size=48, **SMALL, num_classes=7),
    "pre-logits": lambda: TorchvisionViT(image_size=24, **SMALL, num_classes=3, representation_size=16),
}


@pytest.mark.parametrize("case", list(CASES))
def test_torchvision_to_vitkit_and_back_keeps_the_logits(case: str) -> None:
    peer = randomise(CASES[case]())
    images = random_images(3, peer.image_size, peer.image_size)
    model = from_torchvision(peer)
    assert max_logit_difference(model, peer, images) <= TOLERANCE
    state, kwargs = to_torchvision(model)
    back = TorchvisionViT(**kwargs)
    back.load_state_dict(state)
    assert max_logit_difference(back, peer, images) <= TOLERANCE


def test_named_vit_b16_state_dict_loads_by_name_both_ways() -> None:
    with torch.device("meta"):  # ViT-B's own initialisation takes seconds; randomise draws every weight anyway
        peer = vit_b_16(image_size=32, num_classes=10)
    peer = randomise(peer.to_empty(device="cpu"))
    images = random_images(2, 32, 32)
    model = from_torchvision(peer.state_dict(), name="vit_b_16")
    assert (model.config.crop_pct, model.config.interpolation) == (0.875, "bilinear")  # resize 256, crop 224
    assert max_logit_difference(model, peer, images) <= TOLERANCE
    state, kwargs = to_torchvision(model)
    with torch.device("meta"):
        back = TorchvisionViT(**kwargs)
    back.load_state_dict(state, assign=True)
    assert max_logit_difference(back, peer, images) <= TOLERANCE


def test_wrong_torchvision_state_dicts_are_explained() -> None:
    state = TorchvisionViT(image_size=32, **SMALL, num_classes=3).state_dict()
    with pytest.raises(ValueError, match="needs name="):
        from_torchvision(state)
    with pytest.raises(
        ValueError,
        match=r"torchvision's vit_b_16: .*mismatched shapes: "
        r".*class_token: weights \(1, 1, 32\) vs model \(1, 1, 768\)",
    ):
        from_torchvision(state, name="vit_b_16")
    with pytest.raises(ValueError, match="no model named 'vit_q_99'"):
        from_torchvision(state, name="vit_q_99")
