"""int8 linear layers by dynamic quantization: int8 weights, activations quantized on the fly per call.

The encoder blocks' linear layers (q/k/v, projection, MLP: nearly all of a ViT's multiply-adds) become
int8; the patch embedding and the head stay float, where the error would matter most for the least time.
Two routes: torchao (the maintained home of PyTorch quantization) and PyTorch's own
``torch.ao.quantization.quantize_dynamic`` (deprecated in favour of torchao, still present in torch 2.x).
On CPUs PyTorch's own route runs int8 kernels in eager mode while torchao's CPU int8 path needs
torch.compile to be fast, so "auto" takes the PyTorch route while it exists.

PyTorch's route packs the weights for one of its quantized engines, chosen when the layers are quantized: the
backend may name any of ``torch.backends.quantized.supported_engines`` ("x86" and "fbgemm" run fbgemm's kernels,
"onednn" oneDNN's). On a CPU with AVX-512 VNNI oneDNN's kernels use its int8 dot-product instructions and run
faster than PyTorch's default "x86", with the same arithmetic (activations quantized per tensor to 7 bits, weights
to int8) and the same accuracy, so "auto" takes them there; elsewhere it keeps the process's engine, PyTorch's
default for the platform.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import torch
from torch import nn

from vitkit.model.vit import VisionTransformer


def backends() -> tuple[str, ...]:
    """The names ``quantize_int8`` takes: "auto", "torch" (PyTorch's route with the process's engine), this PyTorch
    build's quantized engines, "torchao"."""
    return ("auto", "torch", *torch.backends.quantized.supported_engines, "torchao")


def default_engine() -> str:
    """The engine "auto" packs for: oneDNN where the CPU has AVX-512 VNNI, else the process's current engine."""
    has_vnni = getattr(torch.cpu, "_is_vnni_supported", lambda: False)()
    if has_vnni and "onednn" in torch.backends.quantized.supported_engines:
        return "onednn"
    return torch.backends.quantized.engine


@contextlib.contextmanager
def quantized_engine(engine: str) -> Iterator[None]:
    """PyTorch's quantized engine set to ``engine`` while the weights are packed, then restored: the packed weights
    keep their kernels, and the rest of the process keeps its engine."""
    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = engine
    try:
        yield
    finally:
        torch.backends.quantized.engine = previous


def quantize_int8(model: VisionTransformer, backend: str = "auto") -> VisionTransformer:
    """Dynamic int8 quantization of the encoder blocks' linear layers (in place, inference only)."""
    if backend not in backends():
        raise ValueError(f"int8 backend must be one of {backends()}, got {backend!r}")
    if backend == "torchao":
        try:
            from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
        except ImportError as err:
            raise ImportError("int8 through torchao needs torchao: pip install 'vitkit[fast]' (or torchao)") from err
        quantize_(model.blocks, Int8DynamicActivationInt8WeightConfig())
        return model
    from torch.ao.quantization import quantize_dynamic

    engine = {"auto": default_engine(), "torch": torch.backends.quantized.engine}.get(backend, backend)
    with quantized_engine(engine), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the deprecation notice points to torchao: see the module's docstring
        quantize_dynamic(model.blocks, {nn.Linear}, inplace=True)
    return model
