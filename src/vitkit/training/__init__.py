"""Training: the ViT/DeiT recipe, exact resume, metrics and plots, and multi-process (DDP) runs.

``config_from_args``/``TrainConfig`` say what to train, :func:`train` runs it and returns a :class:`TrainResult`;
:func:`load_run` gives a finished run's model and settings back.
"""

from vitkit.training.config import (
    TrainConfig,
    add_train_arguments,
    config_from_args,
    load_train_config,
    read_config_file,
)
from vitkit.training.trainer import (
    NonFiniteLossError,
    TrainResult,
    build_model,
    build_run_data,
    format_epoch_line,
    load_run,
    train,
)

__all__ = [
    "NonFiniteLossError",
    "TrainConfig",
    "TrainResult",
    "add_train_arguments",
    "build_model",
    "build_run_data",
    "config_from_args",
    "format_epoch_line",
    "load_run",
    "load_train_config",
    "read_config_file",
    "train",
]
