"""Linear layers multiplied by oneDNN on the CPU: at inference (``optimize``) and in ``vitkit train``'s steps.

``nn.Linear`` on the CPU multiplies through MKL's sgemm; PyTorch ships a second matrix-multiply library, oneDNN,
whose kernels it uses for float32 convolutions but not for float32 linear layers. On this project's 2-core AMD EPYC
(MKL reports its generic "Intel(R) Architecture processors" path there) oneDNN's float32 products of ViT-B/16's
shapes took 0.69x to 0.9x MKL's time at 197 rows (batch 1) and at 3,152 rows (batch 16); with them
``optimize(exact=True)`` of ViT-B/16 ran 1.20x faster at batch 1 and 1.12x at batch 16, and a ViT-S/16 training
step at batch 32 1.08x faster. The numbers are float32 sums in another order: logits within a few 1e-6 of
``nn.Linear``'s.

In a training step (``vitkit train`` runs its larger CPU forward passes in :class:`OneDnnProducts`; the model is
left as it is) the backward pass's product for the input's gradient runs in oneDNN too; the one for the weight's
gradient stays with ``torch.mm``: its operands are transposed, and oneDNN was slower on them here.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import FunctionCtx, once_differentiable
from torch.overrides import TorchFunctionMode

from vitkit.model.vit import MLP, VisionTransformer


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
        ctx.has_bias = bias is not None
        return _product(x, weight, bias)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        x, weight = ctx.saved_tensors
        needs_x, needs_weight, needs_bias = ctx.needs_input_grad
        grad_rows = grad.reshape(-1, grad.shape[-1])  # (tokens, out)
        grad_x = _product(grad, weight.t(), None) if needs_x else None
        grad_weight = grad_rows.t().mm(x.reshape(-1, x.shape[-1])) if needs_weight else None
        grad_bias = grad_rows.sum(dim=0) if ctx.has_bias and needs_bias else None
        return grad_x, grad_weight, grad_bias


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
        if isinstance(module, MLP) and type(module.act) is nn.GELU and module.act.approximate == "none":
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
