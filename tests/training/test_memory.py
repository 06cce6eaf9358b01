"""Training memory: GELU outputs and whole blocks are recomputed in the backward pass, not kept, and the gradients
stay the same."""

from __future__ import annotations

import contextlib
import copy
import weakref

import pytest
import torch
import torch.nn.functional as F

from vitkit import VisionTransformer
from vitkit.optimize.onednn import OneDnnProducts, onednn_available
from vitkit.training.loop import FAST_FORWARD_MIN_WORK, forward_work, training_forward
from vitkit.training.memory import recompute_blocks_in_backward, recompute_gelu_outputs

CONTEXTS = {
    "F.linear": contextlib.nullcontext,
    "oneDNN products": OneDnnProducts,
    "bf16 autocast": lambda: torch.autocast("cpu", torch.bfloat16),
}


@pytest.mark.parametrize("context", list(CONTEXTS))
def test_gelu_outputs_are_freed_after_the_forward_and_the_gradients_are_the_same(context: str) -> None:
    if context == "oneDNN products" and not onednn_available():
        pytest.skip("this PyTorch has no oneDNN")
    torch.manual_seed(0)
    model = VisionTransformer(image_size=16, patch_size=4, num_classes=5, hidden_dim=48, depth=2, num_heads=3,
                              mlp_dim=96, dropout=0.0)  # fmt: skip
    images, labels = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 3])
    outputs: list[weakref.ref] = []
    for block in model.blocks:
        block.mlp.act.register_forward_hook(lambda module, args, out: outputs.append(weakref.ref(out)))

    def step(recompute: bool) -> tuple[list[bool], list[torch.Tensor]]:
        outputs.clear()
        model.zero_grad()
        with CONTEXTS[context](), recompute_gelu_outputs() if recompute else contextlib.nullcontext():
            loss = F.cross_entropy(model(images), labels)
        alive = [ref() is not None for ref in outputs]
        loss.backward()
        return alive, [p.grad.clone() for p in model.parameters()]

    kept, expected = step(recompute=False)
    freed, got = step(recompute=True)
    assert kept == [True, True] and freed == [False, False]  # held until the backward pass, or not at all
    for a, b in zip(got, expected):
        assert torch.equal(a, b)  # recomputed bit for bit


def test_a_part_of_a_gelu_output_is_kept_as_it_is() -> None:
    torch.manual_seed(0)
    x, weight = torch.randn(6, 8, requires_grad=True), torch.randn(3, 5, requires_grad=True)

    def gradients(context: object) -> list[torch.Tensor]:
        with context:
            out = F.linear(F.gelu(x)[:, :5], weight)  # a slice: not recomputable as a whole output
        out.square().sum().backward()
        grads = [x.grad.clone(), weight.grad.clone()]
        x.grad = weight.grad = None
        return grads

    for a, b in zip(gradients(recompute_gelu_outputs()), gradients(contextlib.nullcontext())):
        assert torch.equal(a, b)


def test_the_trainers_forward_recomputes_gelu_outputs_on_the_cpu_from_a_size_up() -> None:
    """(The tensors stay on the CPU: what is tested is what each forward context does.)"""
    torch.manual_seed(0)
    h, weight = torch.randn(3, 4, requires_grad=True), torch.randn(2, 4, requires_grad=True)  # both saved
    big = FAST_FORWARD_MIN_WORK
    for device, work, freed in (("cpu", big, True), ("cpu", big - 1, False), ("cuda", big, False)):
        with training_forward(torch.device(device), work):
            gelu_output = F.gelu(h)
            out = F.linear(gelu_output, weight)
        ref = weakref.ref(gelu_output)
        del gelu_output
        assert (ref() is None) == freed, (device, work)
        out.sum().backward()
        # d/dh sum(gelu(h) @ W^T) = gelu'(h) * (1 @ W), by GELU's own backward
        torch.testing.assert_close(h.grad, torch.ops.aten.gelu_backward(torch.ones(3, 2) @ weight.detach(), h))
        h.grad = weight.grad = None


def test_forward_work_is_images_times_tokens_times_width() -> None:
    model = VisionTransformer(image_size=16, patch_size=4, num_classes=5, hidden_dim=48, depth=1, num_heads=3)
    assert forward_work(model, 8) == 8 * (16 + 1) * 48


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
            block.norm1.register_forward_hook(lambda module, inputs, output: calls.append(torch.is_grad_enabled()))
        torch.manual_seed(1)  # the same dropout and drop-path draws; the recomputation replays them
        network(images).square().sum().backward()
        gradients.append({name: p.grad for name, p in network.named_parameters()})
        norm_calls.append(len(calls))
    assert norm_calls == [2, 4]  # one forward per block, then once more in the backward pass
    for name, gradient in gradients[0].items():
        torch.testing.assert_close(gradients[1][name], gradient, rtol=0, atol=0)
