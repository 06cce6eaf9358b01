"""optimize's in-place GELU: the same numbers as nn.GELU, written over its input only when no gradient needs it."""

from __future__ import annotations

import torch
from torch import nn

import vitkit
from vitkit.optimize.inplace import InplaceGELU


def test_inplace_gelu_overwrites_its_input_with_exact_gelu() -> None:
    x = torch.randn(4, 7, 16)
    expected = nn.GELU()(x)  # the model's own activation, computed first on an untouched input
    out = InplaceGELU()(x)
    assert out.data_ptr() == x.data_ptr()  # no new memory
    assert torch.equal(out, expected)


def test_inplace_gelu_keeps_its_input_when_gradients_need_it() -> None:
    x = torch.randn(4, 7, 16, requires_grad=True)
    reference = x.detach().clone().requires_grad_()
    InplaceGELU()(x).sum().backward()
    nn.GELU()(reference).sum().backward()
    assert torch.equal(x.grad, reference.grad)


def test_optimized_copies_use_it_and_the_original_keeps_nn_gelu() -> None:
    torch.manual_seed(0)
    model = vitkit.VisionTransformer(image_size=8, patch_size=2, in_channels=1, num_classes=10, hidden_dim=32, depth=2,
                                     num_heads=2, mlp_dim=64).eval()  # fmt: skip
    # (float32 on the CPU otherwise multiplies through oneDNN, with the GELU inside the first layer's product)
    for options in ({"exact": True, "onednn": False}, {}, {"int8": False, "bf16": True}):
        fast = vitkit.optimize(model, **options)
        assert all(isinstance(block.mlp.act, InplaceGELU) for block in fast.blocks)
    assert all(type(block.mlp.act) is nn.GELU for block in model.blocks)  # training keeps autograd's GELU
