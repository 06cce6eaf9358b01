"""int8 linear layers by dynamic quantization: int8 weights, activations quantized on the fly per call.

The encoder blocks' linear layers (q/k/v, projection, MLP: nearly all of a ViT's multiply-adds) become
int8; the patch embedding and the head stay float, where the error would matter most for the least time.
Two routes: torchao (the maintained home of PyTorch quantization) and PyTorch's own
``torch.ao.quantization.quantize_dynamic`` (deprecated in favour of torchao, still present in torch 2.x).
On CPUs, measured in benchmarks/optimize_accuracy.py and the README, PyTorch's own route runs int8
kernels (fbgemm/oneDNN with VNNI) in eager mode while torchao's CPU int8 path needs torch.compile to be
fast, so "auto" takes the PyTorch route while it exists.
"""

from __future__ import annotations

import warnings

from torch import nn

from vitkit.model.vit import VisionTransformer

BACKENDS = ("auto", "torch", "torchao")


def quantize_int8(model: VisionTransformer, backend: str = "auto") -> VisionTransformer:
    """Dynamic int8 quantization of the encoder blocks' linear layers (in place, inference only)."""
    if backend not in BACKENDS:
        raise ValueError(f"int8 backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "torchao":
        try:
            from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
        except ImportError as err:
            raise ImportError("int8 through torchao needs torchao: pip install 'vitkit[fast]' (or torchao)") from err
        quantize_(model.blocks, Int8DynamicActivationInt8WeightConfig())
        return model
    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings():  # the deprecation notice points to torchao, measured above
        warnings.simplefilter("ignore")
        quantize_dynamic(model.blocks, {nn.Linear}, inplace=True)
    return model
