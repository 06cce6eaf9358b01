"""The CPU training fast path: GELU outputs recomputed (freed, same gradients), oneDNN products, one setting."""

from __future__ import annotations

import contextlib
import logging
import weakref

import pytest
import torch
import torch.nn.functional as F

from vitkit import VisionTransformer
from vitkit.optimize.onednn import OneDnnProducts
from vitkit.training import cpu_kernels
from vitkit.training.cpu_kernels import (
    FAST_FORWARD_MIN_WORK,
    check_gelu_recipes,
    choose,
    forward_work,
    gelu_recipes_work,
    recompute_gelu_outputs,
)

CONTEXTS = {
    "F.linear": contextlib.nullcontext,
    "oneDNN products": OneDnnProducts,
    "bf16 autocast": lambda: torch.autocast("cpu", torch.bfloat16),
}


def small_vit(depth: int = 2) -> VisionTransformer:
    torch.manual_seed(0)
    return VisionTransformer(image_size=16, patch_size=4, num_classes=5, hidden_dim=48, depth=depth, num_heads=3,
                             mlp_dim=96, dropout=0.0)  # fmt: skip


def test_this_pytorch_passes_the_gelu_recipe_check() -> None:
    """Fails, loudly, on a PyTorch whose GELU backward node no longer gives ``_saved_self`` / ``_saved_approximate``
    or whose gradients through the recomputed outputs differ: the private attributes must be looked at again."""
    check_gelu_recipes()
    assert gelu_recipes_work()


def test_a_pytorch_that_changed_gelus_node_keeps_the_outputs_with_one_warning(monkeypatch, caplog) -> None:
    monkeypatch.setattr(cpu_kernels, "_recipes_work", None)
    monkeypatch.setattr(cpu_kernels, "GELU_NODE", "GeluBackward1")  # what a renamed node looks like from here
    with pytest.raises(RuntimeError, match="GELU's backward node is GeluBackward0, expected GeluBackward1"):
        check_gelu_recipes()
    with caplog.at_level(logging.WARNING, logger=cpu_kernels.__name__):
        assert not gelu_recipes_work() and not gelu_recipes_work()
        kernels = choose("on", torch.device("cpu"), small_vit(), images=4)
    assert [r.levelno for r in caplog.records] == [logging.WARNING] and "GELU outputs are kept" in caplog.text
    assert not kernels.recompute_gelu and "failed its check" in kernels.reason
    model = small_vit()
    with kernels.forward():  # the step runs, on the plain path
        F.cross_entropy(model(torch.randn(2, 3, 16, 16)), torch.tensor([0, 1])).backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("context", list(CONTEXTS))
def test_gelu_outputs_are_freed_after_the_forward_and_the_gradients_are_the_same(context: str) -> None:
    model = small_vit()
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


def test_the_setting_decides_what_engages_and_says_why(monkeypatch) -> None:
    """auto: from FAST_FORWARD_MIN_WORK images x tokens x width up, oneDNN as its timing decides; on: any size, oneDNN
    untimed; off, or a GPU: nothing. (The tensors stay on the CPU: what is tested is the choice and its context.)"""
    decisions: list[list[tuple[int, int, int]]] = []

    def onednn_wins(shapes: list[tuple[int, int, int]], what: str) -> bool:
        decisions.append(shapes)
        return False

    monkeypatch.setattr(cpu_kernels, "onednn_wins", onednn_wins)
    model = small_vit(depth=1)
    per_image = forward_work(model, 1)
    big = -(-FAST_FORWARD_MIN_WORK // per_image)  # the fewest images that reach the size
    cases = {
        ("auto", "cpu", big): (False, True, "at least 500,000; oneDNN's products did not beat F.linear's"),
        ("auto", "cpu", big - 1): (False, False, "below 500,000"),
        ("on", "cpu", 1): (True, True, "cpu_kernels=on"),
        ("off", "cpu", big): (False, False, "cpu_kernels=off"),
        ("on", "cuda", big): (False, False, "the device is cuda"),
    }
    for (setting, device, images), (products, recompute, why) in cases.items():
        kernels = choose(setting, torch.device(device), model, images)
        assert (kernels.onednn_products, kernels.recompute_gelu) == (products, recompute), setting
        assert why in kernels.reason and why in kernels.describe()
    tokens = big * 17
    assert decisions == [[(tokens, 48, 48)] * 4 + [(tokens, 48, 96), (tokens, 96, 48), (big, 48, 5)]]
    with pytest.raises(ValueError, match=r"cpu_kernels='fast' is invalid: expected one of \['auto', 'on', 'off'\]"):
        choose("fast", torch.device("cpu"), model, 1)

    h, weight = torch.randn(3, 4, requires_grad=True), torch.randn(2, 4, requires_grad=True)  # both saved
    for setting, freed in (("on", True), ("off", False)):
        with choose(setting, torch.device("cpu"), model, 1).forward():
            gelu_output = F.gelu(h)
            out = F.linear(gelu_output, weight)
        ref = weakref.ref(gelu_output)
        del gelu_output
        assert (ref() is None) == freed, setting
        out.sum().backward()
        # d/dh sum(gelu(h) @ W^T) = gelu'(h) * (1 @ W), by GELU's own backward
        torch.testing.assert_close(h.grad, torch.ops.aten.gelu_backward(torch.ones(3, 2) @ weight.detach(), h))
        h.grad = weight.grad = None


def test_forward_work_is_images_times_tokens_times_width() -> None:
    model = VisionTransformer(image_size=16, patch_size=4, num_classes=5, hidden_dim=48, depth=1, num_heads=3)
    assert forward_work(model, 8) == 8 * (16 + 1) * 48


def test_a_resumed_run_keeps_the_recorded_decision_while_its_setting_and_device_stay() -> None:
    cpu, decision = torch.device("cpu"), choose("on", torch.device("cpu"), small_vit(depth=1), 1)
    record = decision.record("on", cpu)
    kept = cpu_kernels.resumed(record, "on", cpu)
    assert kept is not None and (kept.onednn_products, kept.recompute_gelu) == (
        decision.onednn_products, decision.recompute_gelu
    )  # fmt: skip
    assert kept.reason == "cpu_kernels=on; as decided when the run started"
    assert cpu_kernels.resumed(record, "auto", cpu) is None  # a changed setting decides anew
    assert cpu_kernels.resumed(record, "on", torch.device("cuda")) is None
