"""Every setting of a training run in one dataclass, read from a config file, merged and validated.

The model's architecture and the augmentation are nested settings: ``vit`` holds overrides of the named model's
:class:`~vitkit.model.ViTConfig` and ``augment`` overrides of the data set's :class:`~vitkit.data.AugmentConfig`.
The command line's flags are generated from these dataclasses (``vitkit.cli.train_flags``), so a new architectural
choice or augmentation is settable from the command line and config files without code here. Config files may
nest them (``[vit]`` / ``[augment]`` tables) or write them flat (``depth = 4``), as flags do.

Precedence, lowest first: the dataclass defaults, the run being resumed (``--resume``), the config file
(``--config``), then the flags the user actually typed; nested settings merge key by key (``merge_settings``).
This module imports no torch: `vitkit --help` builds its flags from it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import yaml

from vitkit.data.augment_config import (
    CACHE_CHOICES,
    DECODE_CHOICES,
    SOURCES,
    AugmentConfig,
    default_augment,
    is_shard_location,
)
from vitkit.model.config import (
    LORA_TARGETS,
    PATCH_EMBED_CHOICES,
    POOL_CHOICES,
    POS_EMBED_CHOICES,
    Pair,
    ViTConfig,
    to_pair,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

TRAIN_CONFIG_FILE = "train_config.json"
PRETRAIN_FILE = "pretrain.json"  # in the run folder of `vitkit pretrain`, a masked autoencoder's
DEFAULT_MODEL = "vit_digits_stem"
# Peak learning rates of AdamW: from random weights (the DeiT recipe scaled to small batches), and from trained ones.
SCRATCH_LR = 1e-3
FINETUNE_LR = 1e-4
AMP_CHOICES = ("auto", "bf16", "off")
AUTO_RESUME = "auto"  # --resume auto: continue the run folder's last checkpoint if it has one, else start
CPU_KERNELS_CHOICES = ("auto", "on", "off")  # see vitkit.training.cpu_kernels
# Settings that may change when a run is resumed without changing what it computes (epochs extends the schedule).
RESUMABLE_CHANGES = frozenset(
    {"epochs", "steps", "workers", "save_every", "tensorboard", "progress", "resume", "out", "name", "download",
     "device", "data_dir", "deterministic", "cpu_kernels", "grad_checkpointing", "compile"}
)  # fmt: skip

# ViTConfig fields the data decides (size, channels, classes, normalisation); every other one is a `vit` setting.
DATA_DECIDED = frozenset({"image_size", "in_channels", "num_classes", "class_names", "mean", "std"})
VIT_SETTINGS = tuple(f.name for f in dataclasses.fields(ViTConfig) if f.name not in DATA_DECIDED)
AUGMENT_SETTINGS = tuple(f.name for f in dataclasses.fields(AugmentConfig))
NESTED = {"vit": VIT_SETTINGS, "augment": AUGMENT_SETTINGS}
# The recipe's stochastic depth: every model trains with it unless told otherwise.
DEFAULT_VIT: dict[str, Any] = {"drop_path": 0.1}
# Settings of the model given by name: checked here, offered as choices by the flags.
VIT_CHOICES = {"pos_embed": POS_EMBED_CHOICES, "pool": POOL_CHOICES, "patch_embed": PATCH_EMBED_CHOICES}


def _flag(default: Any, help: str, **argparse_options: Any) -> Any:
    """A dataclass field that also describes its command-line flag (help text, choices, metavar)."""
    return field(default=default, metadata={"help": help, **argparse_options})


@dataclass
class TrainConfig:
    """Everything ``vitkit train`` can be told; saved resolved as ``train_config.json`` in the run folder."""

    # --- data
    dataset: str | None = _flag(None, "data set; default: folder/shards with --data-dir, else digits", choices=SOURCES)
    data_dir: str | None = _flag(
        None,
        "image folder (DIR/train/<class>/..., optional DIR/val/<class>/...), WebDataset shards (a folder from "
        "`vitkit shard`, a pattern such as shards/train-{000000..000009}.tar, URLs) or torchvision data root",
        metavar="DIR",
    )
    download: bool = _flag(False, "let torchvision download --dataset into --data-dir")
    val_fraction: float = _flag(0.1, "held-out fraction of an image folder without val/")
    image_size: Pair | None = _flag(
        None, f"training image size, N or HxW; default: that of --model or --init-from ({DEFAULT_MODEL}, the default "
        "model, takes the data set's)", metavar="SIZE",
    )  # fmt: skip
    workers: int = _flag(0, "data-loading worker processes (also decode an image folder for --cache)")
    cache: str = _flag(
        "auto", "keep the decoded images in memory (no file reads after the first pass; whole-batch augmentation): "
        "auto (when they fit in 1 GiB), on, off", choices=CACHE_CHOICES,
    )  # fmt: skip
    decode: str = _flag(
        "cpu", "where training images are decoded and augmented: cpu (in --workers), or gpu (whole batches on the "
        "training device, torchvision's decode_jpeg; workers only read files)", choices=DECODE_CHOICES,
    )  # fmt: skip
    auto_recipe: bool = _flag(
        True, "choose the model, image size, epochs and augmentation from what an image folder holds (small grey "
        "images: no flips or hard crops, a small ViT on a 4x4 grid of patches, epochs from the number of "
        "images; photos: the defaults); settings given win. --no-auto-recipe: the fixed defaults",
    )  # fmt: skip
    recipe: dict[str, Any] | None = field(
        default=None,
        metadata={"help": "the settings auto_recipe chose from the folder (recorded in train_config.json; resumed "
                  "runs keep them); None: not chosen yet"},
    )  # fmt: skip
    # --- model
    model: str | None = _flag(
        None, f"named configuration (see `vitkit models`); default: that of --init-from, else {DEFAULT_MODEL}"
    )
    vit: dict[str, Any] = field(
        default_factory=lambda: dict(DEFAULT_VIT),
        metadata={"help": "overrides of the model's ViTConfig (flags: one per setting, below)"},
    )
    init_from: str | None = _flag(
        None,
        "fine-tune from these weights (run folder or .safetensors): new head, resized position embeddings as needed",
        metavar="RUN_DIR_OR_FILE",
    )
    keep_preprocessing: bool = _flag(
        True, "with --init-from: keep the source's mean, std, interpolation and crop fraction "
        "(--no-keep-preprocessing: normalise with the data's statistics)",
    )  # fmt: skip
    # --- optimisation
    epochs: int = _flag(40, "passes over the training set")
    steps: int = _flag(
        0, "stop after N optimizer steps and write the checkpoint, without the end-of-run validation and pictures "
        "(smoke tests, timing); 0: run every epoch",
    )  # fmt: skip
    batch_size: int = _flag(64, "images per forward pass over all processes (split evenly between them)")
    accum_steps: int = _flag(1, "forward passes per optimizer step (gradient accumulation)")
    lr: float | None = _flag(
        None,
        f"peak learning rate of AdamW; default: {SCRATCH_LR:g}, or {FINETUNE_LR:g} when fine-tuning (--init-from) "
        "other than a `vitkit pretrain` run folder",
    )
    min_lr: float = _flag(1e-5, "learning rate at the end of the cosine decay")
    warmup_epochs: float = _flag(5.0, "epochs of linear learning-rate warm-up (at most half the run)")
    weight_decay: float = _flag(0.05, "AdamW weight decay (not on norms, biases, position embeddings, CLS token)")
    label_smoothing: float = _flag(0.1, "label smoothing of the cross-entropy loss")
    clip_grad: float = _flag(1.0, "clip the gradient norm to this value; 0 turns clipping off")
    ema_decay: float = _flag(0.99, "decay per optimizer step of the weights' EMA; 0 turns the EMA off")
    mixup: float = _flag(0.0, "MixUp alpha; 0 turns it off")
    cutmix: float = _flag(0.0, "CutMix alpha; 0 turns it off")
    # --- fine-tuning with few labels (vitkit.training.finetune)
    layer_decay: float = _flag(
        1.0, "layer-wise learning-rate decay (BEiT/MAE fine-tuning): block i of D gets lr * X^(D - i), the "
        "embeddings lr * X^(D + 1), the head lr; 1 turns it off",
    )  # fmt: skip
    freeze_blocks: int = _flag(0, "give the embeddings and the first K blocks no gradient; 0: train everything")
    linear_probe: bool = _flag(False, "train the classification head only (every other weight frozen)")
    head_lr_scale: float = _flag(1.0, "the head's learning rate is lr times this")
    lora_rank: int = _flag(
        0, "add low-rank adapters of this rank to the --lora-targets layers and train only them and the head "
        "(needs --init-from); 0 turns LoRA off",
    )  # fmt: skip
    lora_alpha: float | None = _flag(None, "LoRA scaling alpha (the update is B A x * alpha / rank); default: rank")
    lora_targets: str = _flag(
        "q,v", "comma-separated layers that get adapters, of q, k, v, proj (attention), fc1, fc2 (MLP)", metavar="LIST"
    )
    # --- augmentation: overrides of the data set's default (vitkit.data.default_augment)
    augment: dict[str, Any] = field(
        default_factory=dict, metadata={"help": "overrides of the data set's AugmentConfig (flags: one per setting)"}
    )
    skip_bad_files: bool = _flag(
        False, "leave out image files that cannot be read (reporting how many) instead of failing before training"
    )
    # --- how it runs
    seed: int = _flag(0, "seed of the data split, the initial weights, the data order and the augmentation")
    amp: str = _flag("auto", "bf16 autocast: auto (on CUDA), bf16 (also on the CPU) or off", choices=AMP_CHOICES)
    device: str = _flag("auto", "auto (cuda if available), cpu, cuda, cuda:N")
    cpu_kernels: str = _flag(
        "auto", "CPU training kernels (oneDNN products where they are faster, GELU outputs recomputed in the backward "
        "pass): auto (from a forward-pass size up), on, off", choices=CPU_KERNELS_CHOICES,
    )  # fmt: skip
    deterministic: bool = _flag(True, "use deterministic algorithms (torch.use_deterministic_algorithms)")
    shard_model: bool = _flag(
        False, "shard weights, gradients and optimizer state between the processes (FSDP2, one unit per encoder "
        "block) and write sharded checkpoints (torch.distributed.checkpoint); for models too large for DDP",
    )  # fmt: skip
    grad_checkpointing: bool = _flag(
        False, "recompute each encoder block's activations in the backward pass instead of keeping them "
        "(torch.utils.checkpoint): less memory, about a third more compute",
    )  # fmt: skip
    compile: bool = _flag(False, "compile the model for training with torch.compile")
    # --- the run folder
    out: str | None = _flag(None, "run folder; default: runs/NAME", metavar="DIR")
    name: str | None = _flag(None, "run name; default: DATASET-MODEL-DATE-TIME")
    resume: str | None = _flag(
        None, f"continue the interrupted run in this folder; {AUTO_RESUME}: the run folder's (--out) if it has a "
        "checkpoint, else start it (the default under --max-restarts)", metavar="RUN_DIR|auto",
    )  # fmt: skip
    save_every: int = _flag(0, "also write a checkpoint every N optimizer steps; 0: at the end of each epoch only")
    tensorboard: bool = _flag(True, "write TensorBoard event files (when tensorboard is installed)")
    progress: bool = _flag(True, "show a progress bar per epoch")

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            if f.name not in NESTED:
                setattr(self, f.name, _coerce(f.name, getattr(self, f.name), hints[f.name]))
        self.vit = _coerce_nested("vit", self.vit, VIT_SETTINGS, typing.get_type_hints(ViTConfig))
        self.augment = _coerce_nested("augment", self.augment, AUGMENT_SETTINGS, typing.get_type_hints(AugmentConfig))
        if self.dataset is None:
            shards = self.data_dir is not None and is_shard_location(self.data_dir)
            self.dataset = "digits" if self.data_dir is None else "shards" if shards else "folder"
        if self.lr is None:
            self.lr = default_lr(self.init_from)
        self._check()

    def _check(self) -> None:
        def need(ok: bool, name: str, expected: str) -> None:
            if not ok:
                raise ValueError(f"{name}={getattr(self, name)!r} is invalid: expected {expected}")

        for name, choices in (
            ("dataset", SOURCES), ("amp", AMP_CHOICES), ("cache", CACHE_CHOICES), ("cpu_kernels", CPU_KERNELS_CHOICES),
            ("decode", DECODE_CHOICES),
        ):  # fmt: skip
            need(getattr(self, name) in choices, name, f"one of {list(choices)}")
        for name in ("epochs", "batch_size", "accum_steps"):
            need(getattr(self, name) >= 1, name, "an integer >= 1")
        for name in ("workers", "save_every", "seed", "steps"):
            need(getattr(self, name) >= 0, name, "an integer >= 0")
        for name in ("min_lr", "warmup_epochs", "weight_decay", "clip_grad", "mixup", "cutmix"):
            need(getattr(self, name) >= 0, name, "a number >= 0")
        need(self.peak_lr > 0, "lr", "a number > 0")
        need(self.min_lr <= self.peak_lr, "min_lr", f"a number <= lr ({self.lr})")
        for name in ("label_smoothing", "ema_decay"):
            need(0 <= getattr(self, name) < 1, name, "a number in [0, 1)")
        need(0 < self.val_fraction < 1, "val_fraction", "a fraction in (0, 1)")
        need(0 < self.layer_decay <= 1, "layer_decay", "a number in (0, 1]")
        need(self.freeze_blocks >= 0, "freeze_blocks", "an integer >= 0")
        need(self.head_lr_scale > 0, "head_lr_scale", "a number > 0")
        need(self.lora_rank >= 0, "lora_rank", "an integer >= 0")
        need(self.lora_alpha is None or self.lora_alpha > 0, "lora_alpha", "a number > 0")
        targets = self.lora_targets.split(",")
        need(bool(targets) and set(targets) <= set(LORA_TARGETS), "lora_targets", f"names from {list(LORA_TARGETS)}")
        if self.lora_rank and self.init_from is None:
            raise ValueError("lora_rank needs init_from (--init-from RUN_DIR_OR_FILE): adapters adapt trained weights")
        chosen = [name for name in ("linear_probe", "freeze_blocks", "lora_rank") if getattr(self, name)]
        if len(chosen) > 1:
            raise ValueError(f"{' and '.join(chosen)} exclude each other: each decides which weights train; pick one")
        for name, vit_choices in VIT_CHOICES.items():
            if name in self.vit and self.vit[name] not in vit_choices:
                raise ValueError(f"vit.{name}={self.vit[name]!r} is invalid: expected one of {list(vit_choices)}")
        for name in ("dropout", "attention_dropout", "drop_path"):
            if not 0 <= self.vit.get(name, 0.0) < 1:
                raise ValueError(f"vit.{name}={self.vit[name]!r} is invalid: expected a number in [0, 1)")
        self.augmentation()  # AugmentConfig checks the augmentation settings
        if self.dataset == "digits" and self.data_dir is not None:
            raise ValueError(f"the digits data set is built in and takes no data_dir (got {self.data_dir!r})")
        if self.dataset != "digits" and self.data_dir is None:
            raise ValueError(f"dataset {self.dataset!r} needs data_dir (--data-dir DIR)")
        if self.decode == "gpu" and self.dataset not in ("folder", "shards"):
            raise ValueError(f"decode='gpu' decodes image files: expected a folder or shards, got {self.dataset!r}")
        if self.decode == "gpu" and self.augmentation().auto_augment != "none":
            raise ValueError(
                f"decode='gpu' augments whole batches, which auto_augment={self.augmentation().auto_augment!r} "
                "cannot: expected auto_augment 'none', or decode 'cpu'"
            )

    # --- conversions ----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values (sizes as [height, width] lists, nested settings as objects)."""
        data = dataclasses.asdict(self)
        if data["image_size"] is not None:
            data["image_size"] = list(data["image_size"])
        data["vit"] = {k: list(v) if isinstance(v, tuple) else v for k, v in data["vit"].items()}
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> TrainConfig:
        """Build from a mapping of setting names (``-`` or ``_``; nested or flat); unknown keys are an error.

        Nested settings missing from ``data`` keep their defaults (the recipe's drop_path).
        """
        return cls(**merge_settings(default_settings(), _check_keys(data, source)))

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> TrainConfig:
        """Read a TOML, YAML or JSON config file."""
        return cls.from_dict(read_config_file(path), str(path))

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some settings changed (flat names reach into ``vit`` / ``augment``), validated again."""
        return TrainConfig(**merge_settings(self.to_dict(), _check_keys(changes, "replace()")))

    def augmentation(self) -> AugmentConfig:
        """The data set's default augmentation with this run's overrides."""
        return default_augment(cast(str, self.dataset), **self.augment)  # __post_init__ fills in dataset first

    @property
    def peak_lr(self) -> float:
        """The peak learning rate: ``lr``, which ``__post_init__`` fills in when it is not given."""
        if self.lr is None:
            raise ValueError("lr=None: expected the learning rate that TrainConfig.__post_init__ fills in")
        return self.lr

    @property
    def run_dir(self) -> Path:
        """The run folder: ``out``, which ``vitkit.training.prepare_config`` fills in when it is not given."""
        if self.out is None:
            raise ValueError("out=None: expected the run folder that prepare_config fills in")
        return Path(self.out)

    @property
    def model_name(self) -> str:
        """The named model a run starts from (DEFAULT_MODEL unless told or fine-tuning)."""
        return self.model or DEFAULT_MODEL


def default_settings() -> dict[str, Any]:
    """The nested settings' defaults: the recipe's ``vit`` overrides, no ``augment`` overrides."""
    return {"vit": dict(DEFAULT_VIT), "augment": {}}


def merge_settings(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """``base`` updated by ``changes`` (both in nested form); nested settings merge key by key."""
    merged = {**base, **{k: v for k, v in changes.items() if k not in NESTED}}
    for name in NESTED:
        merged[name] = {**base.get(name, {}), **changes.get(name, {})}
    return merged


def default_lr(init_from: str | None) -> float:
    """The peak learning rate of a run that names none: ``SCRATCH_LR`` from random weights; ``FINETUNE_LR`` (10x
    lower) from trained weights, which already see well and should move little; but ``SCRATCH_LR`` again from a
    masked autoencoder's run folder (``vitkit pretrain``), whose encoder is fine-tuned with the recipe of training
    from scratch (He et al. 2021): its features are not yet those of a classifier."""
    if init_from is None:
        return SCRATCH_LR
    location = Path(init_from)
    folder = location if location.is_dir() else location.parent
    return SCRATCH_LR if (folder / PRETRAIN_FILE).is_file() else FINETUNE_LR


def check_batch_split(batch_size: int, processes: int) -> None:
    """Each process takes batch_size / processes images per step, so the split must be exact."""
    if batch_size % processes:
        raise ValueError(
            f"batch_size {batch_size} does not split evenly between {processes} processes: "
            f"use a multiple of {processes}, such as {batch_size // processes * processes or processes}"
        )


def _check_keys(data: Any, source: str) -> dict[str, Any]:
    """Keys normalised (``-`` -> ``_``) and nested: flat ViT and augmentation settings move into their tables."""
    if not isinstance(data, dict):
        raise ValueError(f"{source}: expected a mapping of training settings, got {type(data).__name__}")
    values = {str(key).replace("-", "_"): value for key, value in data.items()}
    if "nproc" in values:
        raise ValueError(
            f"{source}: nproc is not a training setting: the command line starts the processes (vitkit train --nproc N)"
        )
    nested: dict[str, Any] = {}
    for name, settings in NESTED.items():
        table = values.pop(name, None) or {}
        if not isinstance(table, dict):
            raise ValueError(f"{source}: {name} must be a table of settings, got {table!r}")
        table = {str(key).replace("-", "_"): value for key, value in table.items()}
        # Flat settings; null meant "the default" in vitkit 0.1's flat train_config.json.
        table.update({key: value for key in settings if key in values and (value := values.pop(key)) is not None})
        unknown = sorted(set(table) - set(settings))
        if unknown:
            raise ValueError(f"{source}: unknown {name} setting(s) {unknown}; known: {sorted(settings)}")
        nested[name] = table
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(
            f"{source}: unknown training setting(s) {unknown}; known settings: {sorted(known - set(NESTED))}, "
            f"model settings {sorted(VIT_SETTINGS)}, augmentation settings {sorted(AUGMENT_SETTINGS)}"
        )
    return {**values, **nested}


def _coerce_nested(name: str, table: Any, settings: tuple[str, ...], hints: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise ValueError(f"{name} must be a mapping of settings, got {table!r}")
    unknown = sorted(set(table) - set(settings))
    if unknown:
        raise ValueError(f"unknown {name} setting(s) {unknown}; known: {sorted(settings)}")
    return {key: _coerce(f"{name}.{key}", value, hints[key]) for key, value in table.items()}


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
    if typing.get_origin(kind) is dict and isinstance(value, dict):
        return dict(value)
    if typing.get_origin(kind) is tuple:
        return to_pair(tuple(value) if isinstance(value, list) else value, name)
    expected = {float: "a number", int: "an integer", bool: "true or false", str: "a string"}.get(kind, str(kind))
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
        detail = " ".join(str(err).split())  # YAML's messages span several lines: keep the error to one
        raise ValueError(f"config file {path} could not be parsed: {detail}") from err
    return _check_keys(data, f"config file {path}")


def load_train_config(run_dir: str | os.PathLike) -> TrainConfig:
    """The resolved settings a run folder was trained with (its ``train_config.json``)."""
    path = Path(run_dir) / TRAIN_CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a vitkit run folder: it has no {TRAIN_CONFIG_FILE}")
    from vitkit.io import read_json  # vitkit.io imports torch; the flags need none

    saved = read_json(path)
    saved.pop("nproc", None)  # recorded by vitkit 0.1, whose library started the processes itself
    return TrainConfig.from_dict(saved, str(path))
