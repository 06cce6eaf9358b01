"""int8 by PyTorch's quantized engines: the arithmetic by hand, and which engine "auto" packs for."""

from __future__ import annotations

from pathlib import Path
from unittest import mock

import pytest
import torch
from torch import nn

import vitkit
from vitkit.optimize import quantize

ENGINES = [engine for engine in ("x86", "onednn") if engine in torch.backends.quantized.supported_engines]


def hand_quantized_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Dynamic quantization spelled out: the activations per tensor to 7-bit unsigned levels (zero exactly
    representable), times the int8 weights, plus the float bias."""
    low, high = min(x.min().item(), 0.0), max(x.max().item(), 0.0)
    scale = (high - low) / 127
    zero_point = round(-low / scale)
    levels = torch.clamp(torch.round(x / scale) + zero_point, 0, 127)
    return (levels - zero_point) * scale @ weight.T + bias


@pytest.mark.parametrize("engine", ENGINES)
def test_each_engine_computes_the_hand_quantized_product(engine: str) -> None:
    torch.manual_seed(0)
    model = vitkit.VisionTransformer(image_size=8, patch_size=4, in_channels=1, num_classes=3, hidden_dim=64,
                                     depth=1, num_heads=2, mlp_dim=48).eval()  # fmt: skip
    fast = vitkit.optimize(model, int8_backend=engine, tome=0)
    layer = fast.blocks[0].mlp.fc1
    assert not isinstance(layer, nn.Linear)
    x = torch.randn(7, 64) * 3 + 0.5
    with torch.inference_mode():
        expected = hand_quantized_linear(x, layer.weight().dequantize(), layer.bias())
        torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=0)
        # and close to the float layer it replaced: the quantization error only
        torch.testing.assert_close(layer(x), model.blocks[0].mlp.fc1(x), atol=0.2, rtol=0)


def cpu_flags() -> set[str]:
    """The CPU's feature flags as the kernel reports them, read independently of torch."""
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        pytest.skip("no /proc/cpuinfo on this system")
    for line in cpuinfo.read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    pytest.skip("/proc/cpuinfo lists no flags")


def test_auto_packs_for_onednn_on_vnni_cpus_and_leaves_the_engine_as_it_was() -> None:
    before = torch.backends.quantized.engine
    engines_seen = []

    def record_engine(*args: object, **kwargs: object) -> None:
        engines_seen.append(torch.backends.quantized.engine)

    model = vitkit.VisionTransformer(image_size=8, patch_size=4, in_channels=1, num_classes=3, hidden_dim=16,
                                     depth=1, num_heads=2, mlp_dim=32).eval()  # fmt: skip
    with mock.patch("torch.ao.quantization.quantize_dynamic", side_effect=record_engine):
        quantize.quantize_int8(model)
    has_vnni = "avx512_vnni" in cpu_flags() and "onednn" in torch.backends.quantized.supported_engines
    assert engines_seen == ["onednn" if has_vnni else before]
    assert torch.backends.quantized.engine == before
    with mock.patch("torch.ao.quantization.quantize_dynamic", side_effect=record_engine):
        quantize.quantize_int8(model, "torch")  # PyTorch's route as the process has it
    assert engines_seen[-1] == before
    # a failure while packing restores the engine too
    failing = mock.patch("torch.ao.quantization.quantize_dynamic", side_effect=RuntimeError("packing failed"))
    with failing, pytest.raises(RuntimeError, match="packing failed"):
        quantize.quantize_int8(model, ENGINES[-1])
    assert torch.backends.quantized.engine == before
