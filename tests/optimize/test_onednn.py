"""optimize's oneDNN linear layers: nn.Linear's function (GELU after it when fused), computed by oneDNN's product,
where oneDNN's products were timed faster than F.linear's."""

from __future__ import annotations

import logging
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import ProfilerActivity, profile

import vitkit
from vitkit.optimize.onednn import (
    ONEDNN_MARGIN,
    TIMED_ROWS,
    OneDnnLinear,
    OneDnnProducts,
    ProductTimings,
    interleaved_best_seconds,
    linear,
    linear_shapes,
    onednn_wins,
)


def operator_counts(fn: object) -> dict[str, int]:
    """How many times ``fn()`` ran each operator (autograd's backward included)."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return {event.key: event.count for event in prof.key_averages()}


def operators(fn: object) -> set[str]:
    return set(operator_counts(fn))


@pytest.mark.parametrize("gelu", [False, True])
@pytest.mark.parametrize("shape", [(7, 48), (3, 5, 48)])
def test_layer_computes_nn_linear_through_onednn(gelu: bool, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    linear = nn.Linear(48, 80)
    layer = OneDnnLinear(linear, gelu=gelu).requires_grad_(False)
    x = torch.randn(shape)
    expected = F.gelu(linear(x)) if gelu else linear(x)
    with torch.inference_mode():
        torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=0)
        ran = operators(lambda: layer(x))
    assert "mkldnn::_linear_pointwise" in ran and "aten::addmm" not in ran and "aten::gelu" not in ran
    assert layer.weight is linear.weight and set(layer.state_dict()) == {"weight", "bias"}


def test_layer_takes_autograds_path_when_a_gradient_follows() -> None:
    torch.manual_seed(0)
    linear = nn.Linear(16, 8)
    x = torch.randn(4, 16, requires_grad=True)
    reference = x.detach().clone().requires_grad_()
    F.gelu(linear(reference)).sum().backward()
    expected_grad = linear.weight.grad.clone()
    linear.weight.grad = None
    OneDnnLinear(linear, gelu=True)(x).sum().backward()
    torch.testing.assert_close(x.grad, reference.grad)
    torch.testing.assert_close(linear.weight.grad, expected_grad)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("strided", [False, True])
def test_linear_gives_f_linears_values_and_gradients(bias: bool, strided: bool) -> None:
    torch.manual_seed(0)
    x = torch.randn(3, 6, 40)[:, ::2] if strided else torch.randn(3, 5, 40)
    weight, b = torch.randn(24, 40), (torch.randn(24) if bias else None)
    inputs = [t.requires_grad_() for t in (x, weight, b) if t is not None]
    upstream = torch.randn(3, x.shape[1], 24)

    def gradients(fn: object) -> list[torch.Tensor]:
        (fn(x, weight, b) * upstream).sum().backward()
        grads = [t.grad.clone() for t in inputs]
        for t in inputs:
            t.grad = None
        return grads

    expected = gradients(F.linear)
    ran = operator_counts(lambda: gradients(linear))
    for got, want in zip(gradients(linear), expected):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # forward and the input's gradient in oneDNN, the weight's gradient in torch.mm
    assert ran.get("mkldnn::_linear_pointwise") == 2 and "aten::addmm" not in ran and ran.get("aten::mm") == 1


def test_products_mode_trains_the_plain_model_through_onednn_with_its_gradients() -> None:
    torch.manual_seed(0)
    model = vitkit.VisionTransformer(image_size=16, patch_size=4, num_classes=5, hidden_dim=48, depth=2, num_heads=3,
                                     mlp_dim=96)  # fmt: skip
    images, labels = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 3])

    def loss_and_gradients(context: object) -> list[torch.Tensor]:
        model.zero_grad()
        with context:
            loss = F.cross_entropy(model(images), labels)
        loss.backward()
        return [loss.detach()] + [p.grad.clone() for p in model.parameters()]

    expected = loss_and_gradients(torch.enable_grad())
    ran = operator_counts(lambda: loss_and_gradients(OneDnnProducts()))
    for got, want in zip(loss_and_gradients(OneDnnProducts()), expected):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    linears = sum(isinstance(m, nn.Linear) for m in model.modules())
    assert ran.get("mkldnn::_linear_pointwise") == 2 * linears and "aten::addmm" not in ran
    assert all(type(m) is nn.Linear for m in model.modules() if isinstance(m, nn.Linear))  # the model is untouched
    # autocast keeps its own bf16 products
    with OneDnnProducts(), torch.autocast("cpu", torch.bfloat16):
        assert model(images).dtype == torch.bfloat16


def test_exact_copy_multiplies_every_layer_through_onednn_within_1e5() -> None:
    """A wider model than the digit shape, so that each product sums over hundreds of terms."""
    torch.manual_seed(0)
    model = vitkit.VisionTransformer(image_size=32, patch_size=8, num_classes=10, hidden_dim=192, depth=3,
                                     num_heads=3, mlp_dim=768).eval()  # fmt: skip
    fast = vitkit.optimize(model, exact=True, onednn=True)
    linears = [m for m in fast.modules() if isinstance(m, nn.Linear)]
    assert linears and all(type(m) is OneDnnLinear for m in linears)
    assert all(block.mlp.fc1.gelu and type(block.mlp.act) is nn.Identity for block in fast.blocks)
    images = torch.randn(4, 3, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(fast(images), model(images), atol=1e-5, rtol=0)
        ran = operators(lambda: fast(images))
    assert "aten::addmm" not in ran and "aten::linear" not in ran


def test_onednn_refuses_what_it_cannot_multiply() -> None:
    model = vitkit.VisionTransformer(image_size=8, patch_size=2, in_channels=1, num_classes=10, hidden_dim=32, depth=1,
                                     num_heads=2, mlp_dim=64).eval()  # fmt: skip
    for options in ({"int8": True}, {"bf16": True}, {"compile": True}):
        with pytest.raises(ValueError, match="onednn=True multiplies float32 layers on the CPU"):
            vitkit.optimize(model, onednn=True, **options)
    assert not any(isinstance(m, OneDnnLinear) for m in vitkit.optimize(model, onednn=False, int8=False).modules())


def test_onednn_is_chosen_only_where_it_wins_by_the_margin_each_shape_timed_once(caplog) -> None:
    """A timer that reports set seconds per output width: 0.85 of F.linear's time wins (margin 0.9), 0.95 does not;
    several layers are weighed by their summed times; each shape is timed once, on at most TIMED_ROWS rows."""
    seconds = {4: (0.85, 1.0), 6: (0.95, 1.0)}  # out_features: (oneDNN's, F.linear's)
    timed: list[tuple[int, int]] = []

    def timer(calls: dict[str, object]) -> dict[str, float]:
        rows, out = calls["F.linear"]().shape
        torch.testing.assert_close(calls["onednn"](), calls["F.linear"](), atol=1e-5, rtol=1e-5)
        timed.append((rows, out))
        return dict(zip(("onednn", "F.linear"), seconds[out]))

    timings = ProductTimings(timer)
    assert ONEDNN_MARGIN == 0.9
    with caplog.at_level(logging.INFO, logger="vitkit.optimize.onednn"):
        assert onednn_wins([(10, 8, 4)] * 3, timings, what="three layers")
        assert not onednn_wins([(10, 8, 6)], timings)
        assert onednn_wins([(10, 8, 4), (10, 8, 6)], timings)  # 1.8 s against 2.0 s: exactly the margin
        assert not onednn_wins([(10, 8, 4), (10, 8, 6), (10, 8, 6)], timings)  # 2.75 against 3.0
        assert onednn_wins([(TIMED_ROWS * 5, 8, 4)], timings)
    assert timed == [(10, 4), (10, 6), (TIMED_ROWS, 4)]
    assert "three layers: oneDNN's float32 products took 2550.00 ms against F.linear's 3000.00 ms (0.85x): oneDNN" in (
        caplog.text
    )
    assert "(0.95x): F.linear (oneDNN needs <= 0.9x)" in caplog.text


def test_the_default_timer_takes_the_best_of_interleaved_rounds_after_a_warm_up() -> None:
    order: list[str] = []
    best = interleaved_best_seconds({"a": lambda: order.append("a"), "b": lambda: order.append("b")}, rounds=3)
    assert order == ["a", "b"] * 4 and set(best) == {"a", "b"} and all(s >= 0 for s in best.values())


def test_optimize_asks_the_timing_unless_told_and_decides_on_the_models_shapes(monkeypatch) -> None:
    model = vitkit.VisionTransformer(image_size=8, patch_size=4, in_channels=1, num_classes=10, hidden_dim=32, depth=1,
                                     num_heads=2, mlp_dim=64).eval()  # fmt: skip
    asked: list[list[tuple[int, int, int]]] = []
    verdict = False

    def decided(shapes: list[tuple[int, int, int]], what: str) -> bool:
        asked.append(shapes)
        return verdict

    monkeypatch.setattr(sys.modules["vitkit.optimize"], "onednn_wins", decided)

    def onednn_layers(**options: object) -> int:
        return sum(isinstance(m, OneDnnLinear) for m in vitkit.optimize(model, **options).modules())

    assert onednn_layers(exact=True) == 0
    verdict = True
    assert onednn_layers(exact=True) == 5  # q, k and v fused, proj, fc1, fc2, head
    assert asked == [[(5, 32, 32)] * 4 + [(5, 32, 64), (5, 64, 32), (1, 32, 10)]] * 2  # one image: 5 tokens
    assert linear_shapes(model, images=3)[-1] == (3, 32, 10)
    verdict = False
    assert onednn_layers(exact=True, onednn=True) == 5 and onednn_layers(exact=True, onednn=False) == 0
    assert len(asked) == 2  # told: not timed
