"""vitkit: a Vision Transformer you can read in one sitting, train on your own data, and ship.

Names are imported on first use (PEP 562), so that `import vitkit` and `vitkit --help` do not pay for torch.
"""

from __future__ import annotations

from vitkit.lazy import lazy_exports

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "ViTConfig": "vitkit.model",
    "VisionTransformer": "vitkit.model",
    "count_parameters": "vitkit.model",
    "create_model": "vitkit.model",
    "get_config": "vitkit.model",
    "list_models": "vitkit.model",
    "optimize": "vitkit.optimize",
}

__all__ = [*_EXPORTS, "__version__"]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
