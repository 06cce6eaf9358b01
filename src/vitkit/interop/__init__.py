"""The world's pretrained ViTs as vitkit models, and vitkit models for the tools around them.

Each source has one module whose ``convert_*`` function turns the source's weights into ``(ViTConfig, state dict)``
(q/k/v split exactly where the source fuses them); ``model/weights.py`` checks every key and shape. The peer
libraries (timm, transformers, torchvision's models) are imported only inside the functions that use them.
"""

from vitkit.interop.jax import load_jax_npz
from vitkit.interop.timm import from_timm, to_timm
from vitkit.interop.torchvision import from_torchvision, to_torchvision
from vitkit.interop.transformers import from_transformers, to_transformers

__all__ = ["from_timm", "from_torchvision", "from_transformers", "load_jax_npz", "to_timm", "to_torchvision", "to_transformers"]
