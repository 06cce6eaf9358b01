"""An ONNX Runtime session behind the model's own call: images in, logits (a torch tensor) out.

The model is exported with vitkit.interop's exporter (``torch.onnx.export``, batch size left free) and,
for int8, quantized with ONNX Runtime's own dynamic quantization (int8 weights, activations quantized
per call), the route a user would otherwise take by hand.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from vitkit.interop.export import export_onnx
from vitkit.model.config import ViTConfig
from vitkit.model.vit import VisionTransformer

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def _quiet_logging() -> Iterator[None]:
    """The ONNX exporter and quantizer log hundreds of INFO lines (rewrites, skipped nodes): keep warnings only."""
    logging.disable(logging.INFO)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


class OnnxRuntimeModel(nn.Module):
    """Calls an ONNX Runtime session; ``config``, ``get_attention_maps`` and the rest come from the torch model."""

    def __init__(self, model: VisionTransformer, int8: bool = False, threads: int | None = None) -> None:
        super().__init__()
        try:
            import onnxruntime
        except ImportError as err:
            raise ImportError(
                "the ONNX Runtime path needs onnxruntime: pip install 'vitkit[interop]' (or onnxruntime)"
            ) from err
        self.model = model.eval()
        self.int8 = int8
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.log_severity_level = 3  # warnings from graph optimisation are not the user's concern
        with tempfile.TemporaryDirectory() as folder, _quiet_logging():
            path = export_onnx(model, Path(folder) / "model.onnx")
            if int8:
                from onnxruntime.quantization import QuantType, quantize_dynamic

                quantized = Path(folder) / "model.int8.onnx"
                quantize_dynamic(str(path), str(quantized), weight_type=QuantType.QInt8)
                path = quantized
            self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        logger.info("ONNX Runtime session ready (%s)", "int8" if int8 else "fp32")

    @property
    def config(self) -> ViTConfig:
        return self.model.config

    def forward(self, images: Tensor) -> Tensor:
        self.model.check_input(images)
        (logits,) = self.session.run(["logits"], {"images": images.detach().float().cpu().contiguous().numpy()})
        return torch.from_numpy(logits).to(images.device)

    def get_attention_maps(self, images: Tensor) -> list[Tensor]:
        """From the torch model: ONNX Runtime computes logits only."""
        return self.model.get_attention_maps(images)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("model"), name)
