"""The world's pretrained ViTs as vitkit models, and vitkit models for the tools around them.

Each source has one module whose ``convert_*`` function turns the source's weights into ``(ViTConfig, state dict)``
(q/k/v split exactly where the source fuses them); ``model/weights.py`` checks every key and shape. The peer
libraries (timm, transformers, torchvision's models) are imported only inside the functions that use them.
"""

from __future__ import annotations

from pathlib import Path

from vitkit.interop.common import read_state_dict
from vitkit.interop.jax import load_jax_npz
from vitkit.interop.timm import from_timm, timm_hub_config, to_timm
from vitkit.interop.torchvision import from_torchvision, to_torchvision
from vitkit.interop.transformers import from_transformers, to_transformers
from vitkit.model import VisionTransformer

__all__ = [
    "convert_source",
    "from_timm",
    "from_torchvision",
    "from_transformers",
    "load_jax_npz",
    "to_timm",
    "to_torchvision",
    "to_transformers",
]


def convert_source(source: str, library: str, name: str | None = None) -> VisionTransformer:
    """What ``vitkit convert`` reads: a weights file of ``library`` (timm, transformers, torchvision, jax), a
    transformers folder, or a timm/transformers hub id (downloaded by that library, the only download there is).

    ``name`` is the architecture where the file does not say it (see each ``from_*``).
    """
    path = Path(source)
    if library == "jax":
        return load_jax_npz(path, name)
    if library == "transformers":
        return from_transformers(source)
    if library == "timm":
        if not path.exists():
            import timm

            return from_timm(timm.create_model(source, pretrained=True))
        name, preprocessing = timm_hub_config(path, name)
        model = from_timm(read_state_dict(path), name)
        model.config = model.config.replace(**preprocessing)
        return model
    if library == "torchvision":
        return from_torchvision(read_state_dict(path), name)
    raise ValueError(f"unknown source library {library!r}; expected timm, transformers, torchvision or jax")
