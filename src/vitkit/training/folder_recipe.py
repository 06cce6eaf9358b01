"""Defaults chosen from an image folder: what a run trains when only ``--data-dir`` is given.

:func:`choose_recipe` is a pure function of what the folder holds (:class:`FolderFacts`: channels, median image
side, number of images and classes) to settings. Small grey images (at most ``SMALL_SIDE`` pixels, one channel:
digits, letters, symbols, sketches) get what suits glyphs; anything else (photos) gets nothing, that is the
ImageNet-style defaults image folders always had.

The rules for small grey images, and why:

- **no flips, no hard crops, light affine moves** (the built-in digits' augmentation): a flipped or half-cropped
  glyph is another glyph or none, a small rotation, shift or zoom is the same one;
- **a small ViT on a 4x4 grid of patches** (``vit_digits``' architecture at the folder's size, rounded to a
  multiple of 4, as ``vit_pico_patch7_28`` is at 28 px): 16 tokens keep each step cheap, so that the budget goes
  into more steps, and without stochastic depth, since a 4-block model on a few thousand glyphs underfits rather
  than overfits;
- **epochs from the number of images**: a fixed number of optimizer steps (``TARGET_STEPS``), between
  ``MIN_EPOCHS`` and ``MAX_EPOCHS`` passes over the training set. A 4-block model is far from overfitting a
  few thousand glyphs (its training accuracy under augmentation is within a point of its held-out one), so the
  steps are as many as fit in about 1.8 times the time of the documented 28x28 command (30 epochs of
  ``vit_pico_patch7_28`` on 7,000 images).

Settings the user gives always win (:func:`apply_recipe` leaves them alone). The choice is recorded in the run's
``train_config.json`` (``recipe``), so a resumed run keeps it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Collection
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vitkit.data.augment_config import DIGIT_LIKE_AUGMENT

if TYPE_CHECKING:
    from vitkit.training.config import TrainConfig

SMALL_SIDE = 64  # images at most this many pixels on their (median) shorter side count as small
GRID = 4  # patches per side for small images
SMALL_MODEL = "vit_digits"
TARGET_STEPS = 6500  # optimizer steps (of batch 64) that fit the small model to a folder of glyphs
MIN_EPOCHS, MAX_EPOCHS = 20, 200
# The augmentation settings glyphs need other than photos (from the built-in digits' augmentation).
GLYPH_AUGMENT = ("crop_scale_min", "hflip", "affine_degrees", "affine_translate", "affine_scale")
MODEL_CHOICE = ("model", "image_size", "patch_size", "drop_path")  # chosen together: the patches cut the image


@dataclasses.dataclass(frozen=True)
class FolderFacts:
    """What an image folder's training images are: channels (1 only if all are grey), median shorter side,
    number of images and of classes."""

    channels: int
    side: int
    images: int
    classes: int

    @property
    def small_grey(self) -> bool:
        return self.channels == 1 and self.side <= SMALL_SIDE

    def describe(self) -> str:
        return f"{self.images} images of {self.classes} classes, {self.side} px, {self.channels} channel(s)"


def choose_recipe(facts: FolderFacts, batch_size: int = 64) -> dict[str, Any]:
    """The settings (``TrainConfig.replace`` names) that suit a folder of these ``facts``; empty for photos."""
    if not facts.small_grey:
        return {}
    patch = max(1, round(facts.side / GRID))
    steps_per_epoch = max(1, facts.images // batch_size)
    epochs = min(MAX_EPOCHS, max(MIN_EPOCHS, math.ceil(TARGET_STEPS / steps_per_epoch)))
    glyphs = DIGIT_LIKE_AUGMENT.to_dict()
    return {
        "model": SMALL_MODEL,
        "image_size": (GRID * patch, GRID * patch),
        "patch_size": (patch, patch),
        "drop_path": 0.0,
        "epochs": epochs,
        **{name: glyphs[name] for name in GLYPH_AUGMENT},
    }


def folder_facts(data_dir: str | Path, workers: int = 0, skip_bad_files: bool = False) -> FolderFacts | None:
    """The facts of ``data_dir/train`` (None without one: reading the data then says what is missing), from the
    headers the folder index keeps, so that reading the data afterwards opens no file again."""
    from vitkit.data.sources import ClassFolder, scan_folder  # torchvision: imported when a folder is read

    train_dir = Path(data_dir) / "train"
    if not train_dir.is_dir():
        return None
    folder = ClassFolder(train_dir, skip_bad_files=skip_bad_files, workers=workers)
    if not folder.headers:
        return None
    channels, side = scan_folder(folder)  # what the data itself is read as
    return FolderFacts(channels, side, len(folder), len(folder.classes))


def apply_recipe(config: TrainConfig, given: set[str]) -> tuple[TrainConfig, FolderFacts | None]:
    """``config`` with its folder's recipe in every setting not named in ``given`` (flat names, as
    ``TrainConfig.replace`` takes them) and recorded as ``recipe``, and the folder's facts; unchanged (facts None)
    unless a new run trains on an image folder with ``auto_recipe`` and no recipe chosen yet.

    An image size given is the one the rules see; a model or patch size given keeps the geometry its own (the
    data's size, as without a recipe). Fine-tuning (``init_from``) keeps its source's model, size and schedule:
    only the augmentation is chosen.
    """
    if config.dataset != "folder" or not config.auto_recipe or config.recipe is not None or config.resume:
        return config, None
    facts = folder_facts(config.data_dir or "", config.workers, config.skip_bad_files)
    if facts is None:
        return config, None
    if "image_size" in given and config.image_size is not None:  # the size the images are trained at
        facts = dataclasses.replace(facts, side=min(config.image_size))
    chosen = choose_recipe(facts, config.batch_size * config.accum_steps)
    if config.init_from is not None:
        chosen = {name: value for name, value in chosen.items() if name in GLYPH_AUGMENT}
    elif given & {"model", "patch_size"}:  # a named model or patch size: its own geometry, as before
        chosen = {name: value for name, value in chosen.items() if name not in MODEL_CHOICE}
    return with_recipe(config, chosen, given), facts


def with_recipe(config: TrainConfig, recipe: dict[str, Any], given: Collection[str]) -> TrainConfig:
    """``config`` with the ``recipe``'s settings that are not ``given``, recorded as its ``recipe``: for a new run,
    and again for a run resumed with only some of its settings given (it keeps the recipe it was started with)."""
    kept = {name: value for name, value in recipe.items() if name not in given}
    record = {name: list(value) if isinstance(value, tuple) else value for name, value in kept.items()}
    return config.replace(**kept, recipe=record)


def settings_given(config: TrainConfig) -> set[str]:
    """The settings of a config built in code that differ from their defaults (flat names): those the caller
    chose. The command line knows which flags were typed and passes those instead."""
    from vitkit.training.config import TrainConfig

    reference = TrainConfig(dataset=config.dataset, data_dir=config.data_dir, init_from=config.init_from)
    ours, defaults = config.to_dict(), reference.to_dict()
    given = {name for name, value in ours.items() if name not in ("vit", "augment") and value != defaults[name]}
    given |= {name for name, value in ours["vit"].items() if defaults["vit"].get(name) != value}
    return given | set(ours["augment"])


def describe_recipe(recipe: dict[str, Any], facts: FolderFacts) -> str:
    """What was chosen for a folder of these ``facts``, as the flags that would choose it."""
    if not facts.small_grey:
        return "photos: the defaults (random resized crops, horizontal flips)"
    if not recipe:
        return "small grey images, but every setting the recipe chooses was given"
    words = []
    for name, value in recipe.items():
        shown = "x".join(map(str, value)) if isinstance(value, (list, tuple)) else f"{value:g}" if isinstance(
            value, float) else str(value)  # fmt: skip
        words.append(f"--{name.replace('_', '-')} {shown}")
    return "small grey images: " + " ".join(words)
