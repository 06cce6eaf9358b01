"""Every setting of a training run in one dataclass, read from a config file and/or command-line flags.

Precedence, lowest first: the dataclass defaults, the run being resumed (``--resume``), the config file
(``--config``), then the flags the user actually typed. Flags are registered with ``argparse.SUPPRESS`` defaults,
so an untyped flag leaves no attribute behind and cannot mask a config-file value.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vitkit.data import AUTO_AUGMENTS, SOURCES, AugmentConfig
from vitkit.data.transforms import INTERPOLATIONS
from vitkit.io import read_json
from vitkit.model.config import Pair, to_pair

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

TRAIN_CONFIG_FILE = "train_config.json"
DEFAULT_MODEL = "vit_digits"
AMP_CHOICES = ("auto", "bf16", "off")
# Settings that may change when a run is resumed without changing what it computes (epochs extends the schedule).
RESUMABLE_CHANGES = frozenset(
    {"epochs", "workers", "nproc", "save_every", "tensorboard", "progress", "resume", "out", "name", "download",
     "device", "data_dir", "deterministic"}
)  # fmt: skip


def _flag(default: Any, help: str, **argparse_options: Any) -> Any:
    """A dataclass field that also describes its command-line flag (help text, choices, metavar)."""
    return field(default=default, metadata={"help": help, **argparse_options})


@dataclass
class TrainConfig:
    """Everything ``vitkit train`` can be told; saved resolved as ``train_config.json`` in the run folder."""

    # --- data
    dataset: str | None = _flag(None, "data set; default: folder with --data-dir, else digits", choices=SOURCES)
    data_dir: str | None = _flag(
        None,
        "image folder (DIR/train/<class>/..., optional DIR/val/<class>/...) or torchvision data root",
        metavar="DIR",
    )
    download: bool = _flag(False, "let torchvision download --dataset into --data-dir")
    val_fraction: float = _flag(0.1, "held-out fraction of an image folder without val/")
    image_size: Pair | None = _flag(None, "training image size, N or HxW; default: the data set's", metavar="SIZE")
    workers: int = _flag(0, "data-loading worker processes")
    # --- model
    model: str | None = _flag(
        None, f"named configuration (see `vitkit models`); default: that of --init-from, else {DEFAULT_MODEL}"
    )
    patch_size: Pair | None = _flag(None, "patch size, N or HxW; default: the model's", metavar="SIZE")
    hidden_dim: int | None = _flag(None, "token width; default: the model's")
    depth: int | None = _flag(None, "number of encoder blocks; default: the model's")
    num_heads: int | None = _flag(None, "attention heads per block; default: the model's")
    mlp_dim: int | None = _flag(None, "hidden width of the blocks' MLP; default: the model's")
    drop_path: float | None = _flag(0.1, "stochastic depth rate of the last block (rises linearly with depth)")
    dropout: float | None = _flag(None, "dropout rate; default: the model's")
    init_from: str | None = _flag(
        None,
        "fine-tune from these weights (run folder or .safetensors): new head, resized position embeddings as needed",
        metavar="RUN_DIR_OR_FILE",
    )
    # --- optimisation
    epochs: int = _flag(60, "passes over the training set")
    batch_size: int = _flag(64, "images per forward pass over all processes (split evenly between them)")
    accum_steps: int = _flag(1, "forward passes per optimizer step (gradient accumulation)")
    lr: float = _flag(1e-3, "peak learning rate of AdamW")
    min_lr: float = _flag(1e-5, "learning rate at the end of the cosine decay")
    warmup_epochs: float = _flag(5.0, "epochs of linear learning-rate warm-up (at most half the run)")
    weight_decay: float = _flag(0.05, "AdamW weight decay (not on norms, biases, position embeddings, CLS token)")
    label_smoothing: float = _flag(0.1, "label smoothing of the cross-entropy loss")
    clip_grad: float = _flag(1.0, "clip the gradient norm to this value; 0 turns clipping off")
    ema_decay: float = _flag(0.99, "decay per optimizer step of the weights' EMA; 0 turns the EMA off")
    mixup: float = _flag(0.0, "MixUp alpha; 0 turns it off")
    cutmix: float = _flag(0.0, "CutMix alpha; 0 turns it off")
    # --- augmentation (None: the data set's default, see vitkit.data.default_augment)
    crop_scale_min: float | None = _flag(None, "smallest area fraction of the random resized crop; 1 turns it off")
    hflip: float | None = _flag(None, "probability of a horizontal flip")
    affine_degrees: float | None = _flag(None, "random rotation in [-D, D] degrees")
    affine_translate: float | None = _flag(None, "random shift up to this fraction of the image size")
    affine_scale: float | None = _flag(None, "random zoom in [1 - S, 1 + S]")
    affine_interpolation: str | None = _flag(None, "resampling of the random affine", choices=sorted(INTERPOLATIONS))
    auto_augment: str | None = _flag(None, "automatic augmentation policy", choices=AUTO_AUGMENTS)
    randaugment_magnitude: int | None = _flag(None, "RandAugment magnitude (0-30)")
    random_erasing: float | None = _flag(None, "probability of random erasing")
    skip_bad_files: bool = _flag(
        False, "leave out image files that cannot be read (reporting how many) instead of failing before training"
    )
    # --- how it runs
    seed: int = _flag(0, "seed of the data split, the initial weights, the data order and the augmentation")
    amp: str = _flag("auto", "bf16 autocast: auto (on CUDA), bf16 (also on the CPU) or off", choices=AMP_CHOICES)
    device: str = _flag("auto", "auto (cuda if available), cpu, cuda, cuda:N")
    deterministic: bool = _flag(True, "use deterministic algorithms (torch.use_deterministic_algorithms)")
    nproc: int = _flag(1, "processes to train with (DistributedDataParallel through torchrun)")
    # --- the run folder
    out: str | None = _flag(None, "run folder; default: runs/NAME", metavar="DIR")
    name: str | None = _flag(None, "run name; default: DATASET-MODEL-DATE-TIME")
    resume: str | None = _flag(None, "continue the interrupted run in this folder", metavar="RUN_DIR")
    save_every: int = _flag(0, "also write a checkpoint every N optimizer steps; 0: at the end of each epoch only")
    tensorboard: bool = _flag(True, "write TensorBoard event files (when tensorboard is installed)")
    progress: bool = _flag(True, "show a progress bar per epoch")

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            setattr(self, f.name, _coerce(f.name, getattr(self, f.name), hints[f.name]))
        if self.dataset is None:
            self.dataset = "folder" if self.data_dir is not None else "digits"
        self._check()

    def _check(self) -> None:
        def need(ok: bool, name: str, expected: str) -> None:
            if not ok:
                raise ValueError(f"{name}={getattr(self, name)!r} is invalid: expected {expected}")

        for name, choices in (("dataset", SOURCES), ("amp", AMP_CHOICES)):
            need(getattr(self, name) in choices, name, f"one of {list(choices)}")
        for name, choices in (("auto_augment", AUTO_AUGMENTS), ("affine_interpolation", sorted(INTERPOLATIONS))):
            need(getattr(self, name) in (None, *choices), name, f"one of {list(choices)}")
        for name in ("epochs", "batch_size", "accum_steps", "nproc"):
            need(getattr(self, name) >= 1, name, "an integer >= 1")
        for name in ("workers", "save_every", "seed"):
            need(getattr(self, name) >= 0, name, "an integer >= 0")
        for name in ("min_lr", "warmup_epochs", "weight_decay", "clip_grad", "mixup", "cutmix"):
            need(getattr(self, name) >= 0, name, "a number >= 0")
        need(self.lr > 0, "lr", "a number > 0")
        need(self.min_lr <= self.lr, "min_lr", f"a number <= lr ({self.lr})")
        for name in ("label_smoothing", "ema_decay", "drop_path", "dropout"):
            value = getattr(self, name)
            need(value is None or 0 <= value < 1, name, "a number in [0, 1)")
        need(0 < self.val_fraction < 1, "val_fraction", "a fraction in (0, 1)")
        check_batch_split(self.batch_size, self.nproc)
        if self.dataset == "digits" and self.data_dir is not None:
            raise ValueError(f"the digits data set is built in and takes no data_dir (got {self.data_dir!r})")
        if self.dataset != "digits" and self.data_dir is None:
            raise ValueError(f"dataset {self.dataset!r} needs data_dir (--data-dir DIR)")

    # --- conversions ----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values (sizes as [height, width] lists)."""
        data = dataclasses.asdict(self)
        for name in ("image_size", "patch_size"):
            if data[name] is not None:
                data[name] = list(data[name])
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> TrainConfig:
        """Build from a mapping of field names (``-`` or ``_``); unknown keys are an error naming them."""
        return cls(**_check_keys(data, source))

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> TrainConfig:
        """Read a TOML, YAML or JSON config file."""
        return cls.from_dict(read_config_file(path), str(path))

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some fields changed, validated again."""
        return dataclasses.replace(self, **changes)

    def augment_overrides(self) -> dict[str, Any]:
        """The augmentation fields for ``vitkit.data.default_augment(source, **overrides)`` (None: its default)."""
        return {f.name: getattr(self, f.name, None) for f in dataclasses.fields(AugmentConfig)}


def check_batch_split(batch_size: int, processes: int) -> None:
    """Each process takes batch_size / processes images per step, so the split must be exact."""
    if batch_size % processes:
        raise ValueError(
            f"batch_size {batch_size} does not split evenly between {processes} processes: "
            f"use a multiple of {processes}, such as {batch_size // processes * processes or processes}"
        )


def _check_keys(data: Any, source: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ValueError(f"{source}: expected a mapping of training settings, got {type(data).__name__}")
    values = {str(key).replace("-", "_"): value for key, value in data.items()}
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{source}: unknown training setting(s) {unknown}; known settings: {sorted(known)}")
    return values


def _coerce(name: str, value: Any, hint: Any) -> Any:
    """Check a value from a file or from code against the field's type; ints are accepted where floats are."""
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if value is None:
        if type(None) in options:
            return None
        raise ValueError(f"{name} must not be empty (null)")
    kind = next(option for option in options if option is not type(None))
    if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if kind is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind in (bool, str) and isinstance(value, kind):
        return value
    if typing.get_origin(kind) is tuple:
        return to_pair(tuple(value) if isinstance(value, list) else value, name)
    expected = {float: "a number", int: "an integer", bool: "true or false", str: "a string"}[kind]
    raise ValueError(f"{name} must be {expected}, got {value!r}")


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """The settings of a TOML (.toml), YAML (.yaml/.yml) or JSON (.json) file, keys checked against TrainConfig."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path} (expected a .toml, .yaml, .yml or .json file)")
    suffix = path.suffix.lower()
    text = path.read_text(encoding="utf-8")
    try:
        if suffix == ".toml":
            data = tomllib.loads(text)
        elif suffix in (".yaml", ".yml"):
            data = yaml.safe_load(text) or {}
        elif suffix == ".json":
            data = json.loads(text)
        else:
            raise ValueError(f"config file {path} has an unknown extension {suffix!r}: use .toml, .yaml, .yml or .json")
    except (tomllib.TOMLDecodeError, yaml.YAMLError, json.JSONDecodeError) as err:
        raise ValueError(f"config file {path} could not be parsed: {err}") from err
    return _check_keys(data, f"config file {path}")


def load_train_config(run_dir: str | os.PathLike) -> TrainConfig:
    """The resolved settings a run folder was trained with (its ``train_config.json``)."""
    path = Path(run_dir) / TRAIN_CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a vitkit run folder: it has no {TRAIN_CONFIG_FILE}")
    return TrainConfig.from_dict(read_json(path), str(path))


# --- command line ---------------------------------------------------------------------------------


def _parse_size(text: str) -> Pair:
    """argparse type for sizes: ``28`` or ``28x32`` (height x width)."""
    parts = text.lower().replace(",", "x").split("x")
    try:
        return to_pair(tuple(int(part) for part in parts) if len(parts) > 1 else int(parts[0]), "size")
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a size such as 28 or 28x32, got {text!r}") from None


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Register ``--config`` and one flag per :class:`TrainConfig` field (``batch_size`` -> ``--batch-size``)."""
    parser.add_argument(
        "--config", metavar="FILE", default=argparse.SUPPRESS,
        help="TOML, YAML or JSON file of settings (field names as keys); flags given here override it",
    )  # fmt: skip
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        options = dict(f.metadata)
        help_text = options.pop("help")
        if f.default is not None:
            help_text += f" (default: {f.default})"
        flag = "--" + f.name.replace("_", "-")
        kinds = typing.get_args(hints[f.name]) or (hints[f.name],)
        kind = next(k for k in kinds if k is not type(None))
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_text)
            continue
        parse = _parse_size if typing.get_origin(kind) is tuple else kind
        parser.add_argument(flag, type=parse, default=argparse.SUPPRESS, help=help_text, **options)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The resolved config: defaults < resumed run's config < ``--config`` file < flags typed on the command line."""
    typed = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if hasattr(args, f.name)}
    config_file = getattr(args, "config", None)
    from_file = read_config_file(config_file) if config_file else {}
    resume = typed.get("resume", from_file.get("resume"))
    values = load_train_config(resume).to_dict() if resume else {}
    values.update(from_file)
    values.update(typed)
    if resume:
        values["resume"] = resume
    return TrainConfig.from_dict(values, "command line")
