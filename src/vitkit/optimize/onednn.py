"""Linear layers multiplied by oneDNN on the CPU: at inference (``optimize``) and in ``vitkit train``'s steps.

``nn.Linear`` on the CPU multiplies through MKL's sgemm; PyTorch ships a second matrix-multiply library, oneDNN,
whose kernels it uses for float32 convolutions but not for float32 linear layers. On CPUs where MKL falls back to
its generic path (AMD's, for one) oneDNN's products of ViT shapes can be markedly faster. The numbers are float32
sums in another order: logits within a few 1e-6 of ``nn.Linear``'s.

In a training step (``vitkit train`` runs its larger CPU forward passes in :class:`OneDnnProducts`; the model is
left as it is) the backward pass's product for the input's gradient runs in oneDNN too; the one for the weight's
gradient stays with ``torch.mm``: its operands are transposed, a layout oneDNN handles more slowly.

Whether oneDNN is faster depends on the CPU (on some it is slower than MKL). So unless told
(``optimize(onednn=True/False)``, ``--cpu-kernels on``), the choice is made at run time by :func:`onednn_wins`:
both products timed once on the model's own shapes, oneDNN taken only where it wins by a margin
(:data:`ONEDNN_MARGIN`), and the choice logged.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import FunctionCtx, once_differentiable
from torch.overrides import TorchFunctionMode

from vitkit.model.vit import MLP, VisionTransformer

logger = logging.getLogger(__name__)

# oneDNN is taken where its products take at most this share of F.linear's time: a wash is not worth a second library.
ONEDNN_MARGIN = 0.9
TIMED_ROWS = 1024  # products are timed on at most this many rows: a few milliseconds per shape
Shape = tuple[int, int, int]  # (rows, in_features, out_features) of one linear layer's product
Timer = Callable[[dict[str, Callable[[], object]]], dict[str, float]]


def onednn_available() -> bool:
    """Whether this PyTorch build carries oneDNN and its fused linear operator."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def _product(x: Tensor, weight: Tensor, bias: Tensor | None, gelu: bool = False) -> Tensor:
    """x @ weight^T + bias in oneDNN (exact GELU applied inside the product when ``gelu``); no autograd."""
    post_op, algorithm = ("gelu", "none") if gelu else ("none", "")
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, post_op, [], algorithm)


class _LinearFunction(torch.autograd.Function):
    """``F.linear`` with its forward product and its input-gradient product in oneDNN."""

    @staticmethod
    def forward(ctx: FunctionCtx, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        ctx.save_for_backward(x, weight)
        return _product(x, weight, bias)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        x, weight = ctx.saved_tensors
        needs_x, needs_weight, needs_bias = ctx.needs_input_grad
        grad_rows = grad.reshape(-1, grad.shape[-1])  # (tokens, out)
        grad_x = _product(grad, weight.t(), None) if needs_x else None
        grad_weight = grad_rows.t().mm(x.reshape(-1, x.shape[-1])) if needs_weight else None
        grad_bias = grad_rows.sum(dim=0) if needs_bias else None  # False for a None bias
        return grad_x, grad_weight, grad_bias


def interleaved_best_seconds(calls: dict[str, Callable[[], object]], rounds: int = 3) -> dict[str, float]:
    """The best of ``rounds`` timings of each call, taken in turns after one warm-up call each."""
    for call in calls.values():
        call()
    best = dict.fromkeys(calls, float("inf"))
    for _ in range(rounds):
        for label, call in calls.items():
            start = time.perf_counter()
            call()
            best[label] = min(best[label], time.perf_counter() - start)
    return best


class ProductTimings:
    """Seconds of oneDNN's and of ``F.linear``'s product per shape, each shape timed once (``timer``), then kept."""

    def __init__(self, timer: Timer = interleaved_best_seconds) -> None:
        self.timer = timer
        self.seconds: dict[Shape, dict[str, float]] = {}

    def __call__(self, shape: Shape) -> dict[str, float]:
        key = (min(shape[0], TIMED_ROWS), shape[1], shape[2])
        if key not in self.seconds:
            rows, in_features, out_features = key
            generator = torch.Generator().manual_seed(0)  # the global random stream stays untouched
            x = torch.randn(rows, in_features, generator=generator)
            weight = torch.randn(out_features, in_features, generator=generator) / in_features**0.5
            bias = torch.zeros(out_features)
            with torch.no_grad():
                self.seconds[key] = self.timer(
                    {"onednn": lambda: _product(x, weight, bias), "F.linear": lambda: F.linear(x, weight, bias)}
                )
        return self.seconds[key]


PRODUCT_TIMINGS = ProductTimings()  # one per process: a shape is timed once


def onednn_wins(shapes: Sequence[Shape], timings: ProductTimings = PRODUCT_TIMINGS, what: str = "products") -> bool:
    """Whether oneDNN multiplies ``shapes`` (each linear product of a forward pass) in at most :data:`ONEDNN_MARGIN`
    of ``F.linear``'s time, each distinct shape timed once per process; logs the choice. False without oneDNN."""
    if not onednn_available() or not shapes:
        return False
    onednn = sum(timings(shape)["onednn"] for shape in shapes)
    plain = sum(timings(shape)["F.linear"] for shape in shapes)
    wins = onednn <= ONEDNN_MARGIN * plain
    logger.info(
        "%s: oneDNN's float32 products took %.2f ms against F.linear's %.2f ms (%.2fx): %s", what, onednn * 1e3,
        plain * 1e3, onednn / plain, "oneDNN" if wins else f"F.linear (oneDNN needs <= {ONEDNN_MARGIN}x)",
    )  # fmt: skip
    return wins


def linear_shapes(model: VisionTransformer, images: int) -> list[Shape]:
    """(rows, in, out) of each ``nn.Linear`` of ``model`` in a forward pass of ``images`` images: the head multiplies
    one row per image, every other layer one row per token."""
    config = model.config
    tokens = images * (config.num_patches + config.num_prefix_tokens)
    return [
        (images if module is getattr(model, "head", None) else tokens, module.in_features, module.out_features)
        for module in model.modules()
        if isinstance(module, nn.Linear)
    ]


def _applies(x: Tensor, weight: Tensor) -> bool:
    """oneDNN takes float32 on the CPU, outside autocast (which casts to bf16 itself); the rest stays ``F.linear``."""
    return (
        x.is_cpu and x.dtype == torch.float32 and weight.dtype == torch.float32 and not torch.is_autocast_enabled("cpu")
    )


def _gradient_follows(*tensors: Tensor | None) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None, gelu: bool = False) -> Tensor:
    """``F.linear(x, weight, bias)``, then exact GELU when ``gelu``, multiplied by oneDNN where it applies (float32
    on the CPU, no autocast), with gradients when they are needed (GELU inside the product when none are)."""
    if not _applies(x, weight):
        out = F.linear(x, weight, bias)
    elif _gradient_follows(x, weight, bias):
        out = _LinearFunction.apply(x, weight, bias)
    else:
        return _product(x, weight, bias, gelu)
    return F.gelu(out) if gelu else out


class OneDnnLinear(nn.Linear):
    """An ``nn.Linear`` (same parameters, same names) multiplied by :func:`linear`, with exact GELU applied to its
    output when ``gelu``."""

    def __init__(self, layer: nn.Linear, gelu: bool = False) -> None:
        nn.Module.__init__(self)
        self.in_features, self.out_features = layer.in_features, layer.out_features
        self.weight, self.bias = layer.weight, layer.bias
        self.gelu = gelu

    def forward(self, x: Tensor) -> Tensor:
        return linear(x, self.weight, self.bias, self.gelu)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, gelu={self.gelu}"


def onednn_linears(model: VisionTransformer) -> VisionTransformer:
    """Make every float32 ``nn.Linear`` of ``model`` a :class:`OneDnnLinear` (in place), each MLP's exact GELU
    moved into its first layer."""
    for module in model.modules():
        act = module.act if isinstance(module, MLP) else None
        if isinstance(module, MLP) and type(act) is nn.GELU and act.approximate == "none":
            module.fc1, module.act = OneDnnLinear(module.fc1, gelu=True), nn.Identity()
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if type(child) is nn.Linear and child.weight.dtype == torch.float32:
                setattr(parent, name, OneDnnLinear(child))
    return model


class OneDnnProducts(TorchFunctionMode):
    """Within it, every ``F.linear`` (so every ``nn.Linear``) is multiplied by :func:`linear`: the model and its
    modules stay as they are. ``vitkit train`` runs its forward passes in it."""

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        return (linear if func is F.linear else func)(*args, **(kwargs or {}))
