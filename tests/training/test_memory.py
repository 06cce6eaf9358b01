"""Training memory: whole blocks are recomputed in the backward pass, not kept, and the gradients stay the same."""

from __future__ import annotations

import copy

import torch

from vitkit import VisionTransformer
from vitkit.training.memory import recompute_blocks_in_backward


def test_block_recomputation_runs_each_block_again_in_the_backward_pass_with_the_same_gradients() -> None:
    torch.manual_seed(0)
    model = VisionTransformer(image_size=16, patch_size=4, num_classes=5, hidden_dim=32, depth=2, num_heads=2,
                              mlp_dim=64, dropout=0.1, drop_path=0.1)  # fmt: skip
    recomputed = copy.deepcopy(model)
    recompute_blocks_in_backward(recomputed)
    assert recomputed.state_dict().keys() == model.state_dict().keys()  # the files stay as they are
    images = torch.randn(4, 3, 16, 16)
    gradients, norm_calls = [], []
    for network in (model, recomputed):
        calls: list[bool] = []
        for block in network.blocks:
            block.norm1.register_forward_hook(lambda module, inputs, output, calls=calls: calls.append(1))
        torch.manual_seed(1)  # the same dropout and drop-path draws; the recomputation replays them
        network(images).square().sum().backward()
        gradients.append({name: p.grad for name, p in network.named_parameters()})
        norm_calls.append(len(calls))
    assert norm_calls == [2, 4]  # one forward per block, then once more in the backward pass
    for name, gradient in gradients[0].items():
        torch.testing.assert_close(gradients[1][name], gradient, rtol=0, atol=0)
