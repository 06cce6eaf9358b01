"""bfloat16 weights and activations, for CPUs that multiply bf16 natively (AVX-512 BF16, AMX) and GPUs.

bf16 keeps float32's exponent range with an 8-bit mantissa: half the memory traffic and, on such CPUs,
about twice the multiply throughput. The model takes float32 images and returns float32 logits as before.
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor, nn

from vitkit.model.vit import VisionTransformer

logger = logging.getLogger(__name__)


def cpu_has_native_bf16() -> bool:
    """Whether oneDNN finds bf16 instructions (AVX-512 BF16 or AMX) on this CPU."""
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


class Cast(nn.Module):
    """Run ``module`` on its input cast to ``input_dtype`` and/or cast its output to ``output_dtype``."""

    def __init__(
        self, module: nn.Module, input_dtype: torch.dtype | None = None, output_dtype: torch.dtype | None = None
    ) -> None:
        super().__init__()
        self.module, self.input_dtype, self.output_dtype = module, input_dtype, output_dtype

    def forward(self, x: Tensor) -> Tensor:
        out = self.module(x if self.input_dtype is None else x.to(self.input_dtype))
        return out if self.output_dtype is None else out.to(self.output_dtype)


def to_bf16(model: VisionTransformer) -> VisionTransformer:
    """All weights in bf16 (in place); images are cast on the way in, logits back to float32 on the way out."""
    if next(model.parameters()).device.type == "cpu" and not cpu_has_native_bf16():
        logger.warning("this CPU has no native bf16 (AVX-512 BF16 or AMX): bf16 will be slower than float32")
    model.to(torch.bfloat16)
    model.patch_embed = Cast(model.patch_embed, input_dtype=torch.bfloat16)
    model.head = Cast(model.head, output_dtype=torch.float32)
    return model
