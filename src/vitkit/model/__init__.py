"""The Vision Transformer model, its configuration and the registry of named variants.

Names are imported on first use (PEP 562): ``vitkit.model.config`` (no torch) serves the command line's flags.
"""

from __future__ import annotations

from vitkit.lazy import lazy_exports

# public name -> module that defines it
_EXPORTS = {
    "ViTConfig": "vitkit.model.config",
    **dict.fromkeys(("count_parameters", "create_model", "get_config", "list_models"), "vitkit.model.registry"),
    "VisionTransformer": "vitkit.model.vit",
    "patchify": "vitkit.model.functional",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
