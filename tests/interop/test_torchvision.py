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
    "named-b16": lambda: vit_b_16(image_size=32, num_classes=10),
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


def test_a_torchvision_state_dict_loads_by_name_and_wrong_ones_are_explained() -> None:
    peer = randomise(vit_b_16(image_size=32, num_classes=10))
    model = from_torchvision(peer.state_dict(), name="vit_b_16")
    assert (model.config.crop_pct, model.config.interpolation) == (0.875, "bilinear")  # resize 256, crop 224
    assert max_logit_difference(model, peer, random_images(2, 32, 32)) <= TOLERANCE
    with pytest.raises(ValueError, match="needs name="):
        from_torchvision(peer.state_dict())
    with pytest.raises(ValueError, match=r"torchvision's vit_l_16: .*mismatched shapes"):
        from_torchvision(peer.state_dict(), name="vit_l_16")
    with pytest.raises(ValueError, match="no model named 'vit_q_99'"):
        from_torchvision(peer.state_dict(), name="vit_q_99")
