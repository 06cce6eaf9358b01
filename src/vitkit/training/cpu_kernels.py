"""The CPU training fast path, behind one setting: ``TrainConfig.cpu_kernels`` (``--cpu-kernels auto|on|off``).

Two things change in a CPU training step when it engages; the model stays as it is:

- linear layers multiplied by oneDNN (:class:`vitkit.optimize.onednn.OneDnnProducts`), where oneDNN's products of the
  model's shapes were timed faster than ``F.linear``'s on this CPU (:func:`vitkit.optimize.onednn.onednn_wins`);
- GELU outputs recomputed in the backward pass instead of kept. A linear layer keeps its input for its weight's
  gradient; after GELU that is a (B, N, mlp_dim) tensor, four times the width, per block, while GELU's own backward
  node already keeps GELU's input, of the same size. Kept as a recipe instead (GELU's input and its
  ``approximate``), the output is recomputed bit for bit when the backward pass needs it: one wide tensor less per
  block for one GELU per block more, a small cost next to the block's products (benchmarks/gelu_recompute.py
  compares it with PyTorch's selective activation checkpointing).

``auto`` engages both on the CPU from :data:`FAST_FORWARD_MIN_WORK` up (below it the Python around each operator
costs more than they save), ``on`` on the CPU at any size (oneDNN without timing it), ``off`` never. Not on a GPU:
there the recomputation is a separate kernel whose cost is a larger share of a fast step, and GPU training has
activation checkpointing for memory.

The recipe is read from GELU's backward node (``GeluBackward0``'s ``_saved_self`` and ``_saved_approximate``), which
PyTorch does not promise to keep: :func:`gelu_recipes_work` checks, once per process, that this PyTorch still
exposes them and that gradients through the recipes equal plain GELU's bit for bit; if not, outputs are kept as usual,
with one warning.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from vitkit.model import VisionTransformer
from vitkit.optimize.onednn import OneDnnProducts, linear_shapes, onednn_available, onednn_wins
from vitkit.training.config import CPU_KERNELS_CHOICES

logger = logging.getLogger(__name__)

# The smallest forward pass (images x tokens x width) for which ``auto`` engages: below it the Python around each
# operator outweighs what the faster products and the smaller memory save.
FAST_FORWARD_MIN_WORK = 500_000
GELU_NODE = "GeluBackward0"  # the autograd node whose saved input and approximation make the recipe
AS_STARTED = "; as decided when the run started"  # the end of a resumed run's reason


@dataclass
class _GeluOutput:
    """How to recompute a saved GELU output: GELU of ``input`` as ``approximate``, viewed as ``shape``."""

    input: Tensor
    approximate: str
    shape: torch.Size


def _pack(saved: Tensor) -> Tensor | _GeluOutput:
    """A tensor saved for the backward pass, or the recipe for it when it is (a whole view of) a GELU's output."""
    output = saved if saved._base is None else saved._base
    node: Any = output.grad_fn  # GELU's node carries its private _saved_* attributes
    whole = saved.data_ptr() == output.data_ptr() and saved.numel() == output.numel() and saved.is_contiguous()
    if type(node).__name__ == GELU_NODE and whole and output.is_contiguous():
        return _GeluOutput(node._saved_self, node._saved_approximate, saved.shape)
    return saved


def _unpack(packed: Tensor | _GeluOutput) -> Tensor:
    if isinstance(packed, _GeluOutput):
        return F.gelu(packed.input, approximate=packed.approximate).view(packed.shape)
    return packed


def _gelu_hooks() -> Any:
    return torch.autograd.graph.saved_tensors_hooks(_pack, _unpack)


def check_gelu_recipes() -> None:
    """Raise RuntimeError unless this PyTorch's GELU node still gives the recipe and gradients through it equal plain
    GELU backward's, bit for bit, for both of GELU's approximations."""
    generator = torch.Generator().manual_seed(0)
    recipes: list[_GeluOutput] = []

    def pack(saved: Tensor) -> Tensor | _GeluOutput:
        packed = _pack(saved)
        if isinstance(packed, _GeluOutput):
            recipes.append(packed)
        return packed

    for approximate in ("none", "tanh"):
        recipes.clear()
        x = torch.randn(5, 8, generator=generator, requires_grad=True)
        weight = torch.randn(3, 8, generator=generator, requires_grad=True)
        output = F.gelu(x, approximate=approximate)
        node: Any = output.grad_fn
        if type(node).__name__ != GELU_NODE:
            raise RuntimeError(f"GELU's backward node is {type(node).__name__}, expected {GELU_NODE}")
        if not torch.equal(node._saved_self, x) or node._saved_approximate != approximate:
            raise RuntimeError(f"{GELU_NODE}'s _saved_self / _saved_approximate no longer hold GELU's input and mode")
        gradients = []
        for hooks in (torch.autograd.graph.saved_tensors_hooks(pack, _unpack), contextlib.nullcontext()):
            with hooks:
                loss = F.linear(F.gelu(x, approximate=approximate), weight).square().sum()
            gradients.append(torch.autograd.grad(loss, (x, weight)))
        if not recipes:
            raise RuntimeError("no GELU output was turned into a recipe")
        if not all(torch.equal(a, b) for a, b in zip(*gradients)):
            raise RuntimeError("gradients through recomputed GELU outputs differ from plain GELU backward's")


_recipes_work: bool | None = None  # check_gelu_recipes' verdict, found at first use


def gelu_recipes_work() -> bool:
    """Whether GELU outputs can be recomputed on this PyTorch (:func:`check_gelu_recipes`, run once per process);
    warns once when they cannot."""
    global _recipes_work
    if _recipes_work is None:
        try:
            check_gelu_recipes()
            _recipes_work = True
        except Exception as err:  # any failure of private attributes means: keep the outputs, never fail a step
            logger.warning("GELU outputs are kept, not recomputed: this PyTorch %s fails the check (%s)",
                           torch.__version__, err)  # fmt: skip
            _recipes_work = False
    return _recipes_work


def recompute_gelu_outputs() -> Any:
    """A context for forward passes: saved GELU outputs are recomputed in the backward pass (where this PyTorch
    passes :func:`check_gelu_recipes`; elsewhere they are kept)."""
    return _gelu_hooks() if gelu_recipes_work() else contextlib.nullcontext()


@dataclass(frozen=True)
class CpuKernels:
    """What a training run's forward passes run in, and why: see :func:`choose`."""

    onednn_products: bool
    recompute_gelu: bool
    reason: str

    @contextlib.contextmanager
    def forward(self) -> Iterator[None]:
        """The context for a forward pass (training or validation)."""
        products = OneDnnProducts() if self.onednn_products else contextlib.nullcontext()
        with products, _gelu_hooks() if self.recompute_gelu else contextlib.nullcontext():
            yield

    def describe(self) -> str:
        parts = ["oneDNN products"] * self.onednn_products + ["GELU outputs recomputed in the backward pass"] * (
            self.recompute_gelu
        )
        return f"{' and '.join(parts) or 'none'} ({self.reason})"

    def record(self, setting: str, device: torch.device) -> dict[str, Any]:
        """The decision as a checkpoint keeps it, with the ``setting`` and device type it was made for: a resumed
        run takes it back (:func:`resumed`) instead of timing oneDNN again."""
        return {"setting": setting, "device": device.type, "onednn_products": self.onednn_products,
                "recompute_gelu": self.recompute_gelu, "reason": self.reason}  # fmt: skip


def resumed(record: dict[str, Any], setting: str, device: torch.device) -> CpuKernels | None:
    """The decision a run's checkpoint recorded (:meth:`CpuKernels.record`), for the resumed run when its setting and
    device type are those the decision was made for; None when they changed (the new setting decides anew).

    oneDNN's products sum in another order than ``F.linear``'s, so a decision taken again (a new timing) could
    change what the rest of the run computes; kept, the resumed run continues as it started, bit for bit.
    """
    if record.get("setting") != setting or record.get("device") != device.type:
        return None
    products = bool(record["onednn_products"]) and onednn_available()
    recompute = bool(record["recompute_gelu"]) and gelu_recipes_work()
    return CpuKernels(products, recompute, record["reason"].removesuffix(AS_STARTED) + AS_STARTED)


def forward_work(model: VisionTransformer, images: int) -> int:
    """images x tokens x width: the size of a forward pass's linear products, for :data:`FAST_FORWARD_MIN_WORK`."""
    return images * (model.config.num_patches + model.config.num_prefix_tokens) * model.config.hidden_dim


def choose(setting: str, device: torch.device, model: VisionTransformer, images: int) -> CpuKernels:
    """The CPU kernels for training ``model`` on ``device`` with forward passes of ``images`` images under
    ``setting`` (auto, on, off). ``auto`` times oneDNN's products on the model's shapes (once per process and shape)."""
    if setting not in CPU_KERNELS_CHOICES:
        raise ValueError(f"cpu_kernels={setting!r} is invalid: expected one of {list(CPU_KERNELS_CHOICES)}")
    if device.type != "cpu":
        return CpuKernels(False, False, f"cpu_kernels={setting}, but the device is {device}: they are for the CPU")
    if setting == "off":
        return CpuKernels(False, False, "cpu_kernels=off")
    work = forward_work(model, images)
    if setting == "auto" and work < FAST_FORWARD_MIN_WORK:
        return CpuKernels(
            False, False, f"cpu_kernels=auto: a forward pass of {work:,} images x tokens x width is below "
            f"{FAST_FORWARD_MIN_WORK:,}, where they cost more than they save",
        )  # fmt: skip
    recompute = gelu_recipes_work()
    if setting == "on":
        products = onednn_available()
        why = "cpu_kernels=on" + ("" if products else "; this PyTorch has no oneDNN")
    else:
        products = onednn_wins(linear_shapes(model, images), what="training products")
        verdict = "beat" if products else "did not beat"
        why = (
            f"cpu_kernels=auto: a forward pass of {work:,} images x tokens x width, at least "
            f"{FAST_FORWARD_MIN_WORK:,}; oneDNN's products {verdict} F.linear's on this CPU"
        )
    if not recompute:
        why += "; GELU recomputation failed its check on this PyTorch"
    return CpuKernels(products, recompute, why)
