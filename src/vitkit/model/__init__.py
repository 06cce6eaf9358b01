"""The Vision Transformer model, its configuration and the registry of named variants."""

from vitkit.model.config import ViTConfig
from vitkit.model.registry import count_parameters, create_model, get_config, list_models
from vitkit.model.vit import VisionTransformer, patchify

__all__ = [
    "ViTConfig",
    "VisionTransformer",
    "count_parameters",
    "create_model",
    "get_config",
    "list_models",
    "patchify",
]
