"""vitkit: a Vision Transformer you can read in one sitting, train on your own data, and ship."""

from vitkit.model import (
    ViTConfig,
    VisionTransformer,
    count_parameters,
    create_model,
    get_config,
    list_models,
)

__version__ = "0.1.0"

__all__ = [
    "ViTConfig",
    "VisionTransformer",
    "count_parameters",
    "create_model",
    "get_config",
    "list_models",
    "__version__",
]
