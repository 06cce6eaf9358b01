"""Training: the ViT/DeiT recipe, exact resume, metrics and plots, and multi-process (DDP) runs.

``TrainConfig`` says what to train, :func:`train` runs it and returns a :class:`TrainResult`;
:func:`load_run` gives a finished run's model and settings back. ``config`` holds the settings (no torch),
``loop`` the epoch/step loop, ``run`` the run folder. Names are imported on first use (PEP 562), so that the
command line builds its flags without importing torch.
"""

from __future__ import annotations

from vitkit.lazy import lazy_exports

# public name -> module that defines it
_EXPORTS = {
    **dict.fromkeys(
        ("TrainConfig", "load_train_config", "read_config_file"),
        "vitkit.training.config",
    ),
    "NonFiniteLossError": "vitkit.training.loop",
    **dict.fromkeys(
        ("TrainResult", "build_model", "build_run_data", "load_run", "prepare_config", "train"), "vitkit.training.run"
    ),
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
