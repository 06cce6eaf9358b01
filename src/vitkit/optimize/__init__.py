"""A fast inference path: ``optimize(model)`` returns a model with the same call and the same ``config``.

Each option is an inference transform applied to a copy of the model from outside its class (the model
file keeps reading like the seed, and training keeps its separate q/k/v layers):

- ``fuse_qkv``: q, k, v weights stacked into one linear layer (exact);
- always (exact): the MLP's GELU written in place, over the first layer's output, and on the CPU the MLP run in
  chunks of rows whose activations stay in reused memory;
- ``onednn``: on the CPU in float32, the linear layers multiplied by oneDNN, the MLP's GELU inside its first
  product (within a few 1e-6 of ``nn.Linear``; see :mod:`vitkit.optimize.onednn`), by default where oneDNN's
  products of the model's shapes were timed faster than ``F.linear``'s on this CPU;
- ``int8``: dynamic int8 quantization of the encoder's linear layers (``int8_backend``: "auto", one of PyTorch's
  quantized engines, or "torchao"; see :mod:`vitkit.optimize.quantize`);
- ``bf16``: bfloat16 weights and activations (CPUs with AVX-512 BF16 or AMX, GPUs);
- ``tome``: Token Merging, ``r`` tokens merged per block (training-free; see :func:`default_tome`);
- ``compile``: ``torch.compile`` of the result;
- ``onnxruntime``: an ONNX Runtime session (fp32, or int8 with ``int8=True``) behind the same call.

``exact=True`` keeps float32 logits (within 1e-5 of the plain model): fused q/k/v, oneDNN products, GELU in place
and the MLP in chunks only, unless ``compile`` is asked for too. The default turns on the fastest combination that
stays within the accuracy bar measured in benchmarks/optimize_accuracy.py (top-1 agreement with float32 >= 99%,
accuracy lower by <= 0.5 points on a trained model): fused q/k/v + int8, and in models at least as large as
ViT-B/16 at 224 (width times tokens) Token Merging of a quarter of the patches.
"""

from __future__ import annotations

import copy
import logging
import sys
import types
from typing import Any, cast

import torch
from torch import nn

from vitkit.model.config import ViTConfig
from vitkit.model.vit import VisionTransformer
from vitkit.optimize.bf16 import to_bf16
from vitkit.optimize.chunk import chunk_mlps
from vitkit.optimize.fuse import fuse_qkv as fuse_qkv_layers
from vitkit.optimize.inplace import inplace_gelu
from vitkit.optimize.onednn import linear_shapes, onednn_available, onednn_linears, onednn_wins
from vitkit.optimize.quantize import quantize_int8
from vitkit.optimize.tome import apply_tome

logger = logging.getLogger(__name__)

__all__ = ["default_tome", "optimize"]


TOME_MIN_SIZE = 768 * 197  # width x tokens of ViT-B/16 at 224: below it merging cost more than it saved


def default_tome(config: ViTConfig) -> int:
    """Tokens merged per block by default: a quarter of the patches over the whole depth (ViT-B/16 at 224: 4), in
    models whose width times tokens is at least ViT-B/16's at 224 (:data:`TOME_MIN_SIZE`); none in smaller ones.

    A quarter of the patches is the most that keeps top-1 agreement with float32 within the accuracy bar
    (benchmarks/optimize_accuracy.py checks it). The matching costs a few small steps per block, while the merged
    tokens save work that grows with the width and the tokens: below ViT-B/16's size the steps cost more than the
    merged tokens save (benchmarks/ compares the two).

    Mean-pooled models merge nothing (their head would average merged tokens without their sizes).
    """
    tokens = config.num_patches + int(config.class_token)
    if config.pool != "cls" or config.hidden_dim * tokens < TOME_MIN_SIZE:
        return 0
    return config.num_patches // 4 // config.depth


def optimize(
    model: VisionTransformer,
    exact: bool = False,
    *,
    fuse_qkv: bool = True,
    int8: bool | None = None,
    bf16: bool = False,
    onednn: bool | None = None,
    tome: int | None = None,
    compile: bool = False,
    onnxruntime: bool = False,
    int8_backend: str = "auto",
) -> nn.Module:
    """An inference copy of ``model`` (eval mode, no gradients); the original is left untouched.

    ``int8`` defaults to on unless ``exact``, ``bf16`` or a GPU model says otherwise; ``onednn`` to on for a
    float32 CPU model (no int8, bf16 or compile) where PyTorch has oneDNN and its products of the model's shapes at
    one image were timed faster than ``F.linear``'s (:func:`~vitkit.optimize.onednn.onednn_wins`); ``tome`` to
    :func:`default_tome` unless ``exact`` or a GPU model (there its many small matching steps, each a kernel
    launch, cost more than the merged tokens save). Options that change the numbers (int8, bf16, tome > 0) cannot
    be combined with ``exact=True``.
    """
    if not isinstance(model, VisionTransformer):
        raise ValueError(f"optimize expects a vitkit VisionTransformer, got {type(model).__name__}")
    on_cpu = next(model.parameters()).device.type == "cpu"
    if tome is None:
        tome = 0 if exact or onnxruntime or not on_cpu else default_tome(model.config)
    if int8 is None:
        int8 = not exact and not bf16 and on_cpu
    if exact and (int8 or bf16 or tome):
        raise ValueError(
            f"exact=True keeps float32 logits, but int8={int8}, bf16={bf16}, tome={tome} change them: "
            "drop those options or use exact=False"
        )
    if int8 and bf16:
        raise ValueError("choose int8 or bf16, not both: int8 layers take float32 activations")
    if int8 and not on_cpu:
        raise ValueError("int8 dynamic quantization runs on the CPU: move the model to the CPU or use bf16=True")
    eager_float32_cpu = on_cpu and not (int8 or bf16 or onnxruntime or compile)
    if onednn is None:
        onednn = eager_float32_cpu and onednn_wins(linear_shapes(model, images=1), what="optimize")
    if onednn and not (eager_float32_cpu and onednn_available()):
        raise ValueError(
            "onednn=True multiplies float32 layers on the CPU through PyTorch's oneDNN: it needs a CPU model, no "
            f"int8, bf16, onnxruntime or compile (got int8={int8}, bf16={bf16}, onnxruntime={onnxruntime}, "
            f"compile={compile}; torch.compile chooses its own products) and a PyTorch built with oneDNN "
            f"(available: {onednn_available()})"
        )
    if onnxruntime and (bf16 or tome or compile):
        raise ValueError("the ONNX Runtime path takes int8=True/False only, not bf16, tome or compile")
    fast = copy.deepcopy(model).eval().requires_grad_(False)
    if onnxruntime:
        from vitkit.optimize.onnx_runtime import OnnxRuntimeModel

        return OnnxRuntimeModel(fast, int8=int8)
    if on_cpu:
        chunk_mlps(fast)
    if fuse_qkv or tome:
        fuse_qkv_layers(fast)
    if tome:
        apply_tome(fast, tome)
    if onednn:
        onednn_linears(fast)
    inplace_gelu(fast)  # the GELUs oneDNN did not take into a product
    if bf16:
        to_bf16(fast)
    if int8:
        quantize_int8(fast, int8_backend)
    logger.info(
        "optimized: fuse_qkv=%s int8=%s bf16=%s onednn=%s tome=%s compile=%s",
        fuse_qkv or bool(tome), int8, bf16, onednn, tome, compile,
    )  # fmt: skip
    # torch.compile of a Module returns an OptimizedModule (a Module); its annotation only says "a callable"
    return cast(nn.Module, torch.compile(fast)) if compile else fast


class _CallablePackage(types.ModuleType):
    """``vitkit.optimize`` names both this package and its function: importing a submodule (``vitkit.optimize.fuse``)
    sets the attribute ``vitkit.optimize`` to the package, so the package, called, is the function."""

    def __call__(self, *args: Any, **kwargs: Any) -> nn.Module:
        return optimize(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
