"""vitkit models out: ONNX (checked with onnxruntime), a transformers folder, a timm state dict, and a LoRA run's
adapters merged into a plain vitkit model folder.

ONNX export uses ``torch.onnx.export``'s dynamo exporter: the batch dimension is always dynamic, and with
``dynamic_image_size`` the height and width are too, the position vectors being interpolated inside the graph
exactly as ``set_image_size`` resizes them (bicubic, antialiased: ONNX Resize from opset 18).
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import numpy as np
import torch
from torch import Tensor, nn

from vitkit.interop.timm import create_model_call, to_timm
from vitkit.io import atomic_path, save_safetensors
from vitkit.model import VisionTransformer
from vitkit.model.config import Pair, ViTConfig
from vitkit.model.lora import merge_lora
from vitkit.model.weights import interpolate_position_vectors
from vitkit.training.finetune import load_lora_model

ONNX_OPSET = 18  # Resize with antialiasing
MAX_ONNX_SIDE = 4096  # the largest image side the dynamic graph is declared for


class AnyImageSize(nn.Module):
    """The model at any image size whose sides are multiples of the patch size: the position vectors are
    interpolated to the input's patch grid in the forward pass (so a traced graph keeps the interpolation)."""

    def __init__(self, model: VisionTransformer) -> None:
        super().__init__()
        if model.config.pos_embed != "learned":
            raise ValueError("a dynamic image size needs learned position vectors; export this model at a fixed size")
        self.model = model

    def forward(self, images: Tensor) -> Tensor:
        model = self.model
        grid = (images.shape[-2] // model.patch_size[0], images.shape[-1] // model.patch_size[1])
        tokens = model.patch_embed(images)
        if model.config.class_token:
            tokens = torch.cat([model.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)
        config = model.config
        x = tokens + interpolate_position_vectors(model.pos_embed, config.grid_size, grid, config.num_prefix_tokens)
        for block in model.blocks:
            x = block(x)
        return model.forward_head(model.norm(x))


# The exporter's optimisation passes log every rewrite at INFO (over a hundred lines for a small model).
_EXPORTER_LOGGERS = ("onnxscript", "onnx_ir", "torch.onnx")


@contextlib.contextmanager
def _exporter_logs_at_debug() -> Iterator[None]:
    """The exporter's INFO records shown only when the application logs at DEBUG."""
    loggers = [logging.getLogger(name) for name in _EXPORTER_LOGGERS]
    levels = [one.level for one in loggers]
    if not logging.getLogger().isEnabledFor(logging.DEBUG):
        for one in loggers:
            one.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for one, level in zip(loggers, levels):
            one.setLevel(level)


def onnx_metadata(config: ViTConfig) -> dict[str, str]:
    """What a program needs besides the graph to use the file as ``vitkit predict`` does (docs/guides/onnx.md):
    class names, image size, channels and the preprocessing, each a JSON value in the ONNX metadata_props."""
    values = {
        "class_names": config.labels,
        "image_size": list(config.image_size),
        "in_channels": config.in_channels,
        "mean": list(config.mean) if config.mean is not None else [0.0] * config.in_channels,
        "std": list(config.std) if config.std is not None else [1.0] * config.in_channels,
        "interpolation": config.interpolation,
        "crop_pct": config.crop_pct,
        "crop_mode": config.crop_mode,
    }
    return {key: json.dumps(value) for key, value in values.items()}


def export_onnx(model: VisionTransformer, path: str | os.PathLike, dynamic_image_size: bool = False) -> Path:
    """Write ``model`` as ONNX (input "images" (B, C, H, W), output "logits"), batch size dynamic, with the class
    names and preprocessing in its metadata (:func:`onnx_metadata`)."""
    path = Path(path)
    model = copy.deepcopy(model).float().cpu().eval()
    height, width = model.image_size
    batch = torch.export.Dim("batch", min=1, max=65536)
    shapes: dict[int, object] = {0: batch}
    module: nn.Module = model
    if dynamic_image_size:
        module = AnyImageSize(model).eval()
        ph, pw = model.patch_size
        shapes[2] = ph * torch.export.Dim("grid_height", min=1, max=MAX_ONNX_SIDE // ph)
        shapes[3] = pw * torch.export.Dim("grid_width", min=1, max=MAX_ONNX_SIDE // pw)
    example = torch.zeros(2, model.in_channels, height, width)
    with _exporter_logs_at_debug():
        # torch types the result ONNXProgram | None; only its legacy exporter (dynamo=False) returns None
        program = cast("torch.onnx.ONNXProgram", torch.onnx.export(
            module, (example,), input_names=["images"], output_names=["logits"], dynamic_shapes={"images": shapes},
            opset_version=ONNX_OPSET, dynamo=True, verbose=False,
        ))  # fmt: skip
    program.model.metadata_props.update(onnx_metadata(model.config))
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        program.save(tmp)
    return path


@torch.no_grad()
def check_onnx(
    model: VisionTransformer,
    path: str | os.PathLike,
    batch_sizes: tuple[int, ...] = (1, 5),
    image_sizes: tuple[Pair, ...] = (),
    seed: int = 0,
) -> dict[str, float]:
    """Max abs difference of logits, onnxruntime vs PyTorch, on random images: per batch size at the model's
    size, and per extra image size against the PyTorch model resized to it (``set_image_size``)."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(seed)
    model = copy.deepcopy(model).float().cpu().eval()
    cases = [(f"batch {b}", model, (b, *model.image_size)) for b in batch_sizes]
    for size in image_sizes:
        resized = copy.deepcopy(model)
        resized.set_image_size(size)
        cases.append((f"image {size[0]}x{size[1]}", resized, (2, *size)))
    differences = {}
    for name, reference, (batch, height, width) in cases:
        images = torch.randn(batch, model.in_channels, height, width, generator=generator)
        (logits,) = session.run(["logits"], {"images": images.numpy()})
        differences[name] = float(np.abs(logits - reference(images).numpy()).max())
    return differences


def export_timm(model: VisionTransformer, path: str | os.PathLike) -> str:
    """Write a timm state dict (``.safetensors``, else ``torch.save``) and return the ``create_model`` call it fits."""
    path = Path(path)
    state, kwargs = to_timm(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        save_safetensors(state, path)
    else:
        with atomic_path(path) as tmp:
            torch.save(state, tmp)
    return create_model_call(kwargs)


@torch.no_grad()
def export_merged_lora(run_dir: str | os.PathLike, out: str | os.PathLike, seed: int = 0) -> tuple[Path, float]:
    """Write a LoRA run's model, rebuilt from its base weights and adapters and merged, as a plain vitkit model
    folder (``config.json`` + ``model.safetensors``, no adapters); returns (the folder, the max abs difference of
    logits between the merged and the adapted model on random images)."""
    adapted = load_lora_model(run_dir).float().cpu()
    merged = merge_lora(adapted).eval()
    folder = merged.save_pretrained(out)
    images = torch.randn(4, adapted.in_channels, *adapted.image_size, generator=torch.Generator().manual_seed(seed))
    return folder, float((merged(images) - adapted(images)).abs().max())
