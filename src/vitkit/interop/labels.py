"""Class names for converted checkpoints: read from a file the user gives, or ImageNet's for ImageNet-sized heads.

Checkpoints store weights, not the names of their classes. transformers configs carry them (``id2label``); for
the others a head of ImageNet-1k's or ImageNet-21k's size gets the names timm ships offline (``timm.data``), and
any other head takes them from a file (``vitkit convert --labels FILE``).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

logger = logging.getLogger(__name__)

LABELS_FORMATS = "one name a line, a JSON list of names, or a JSON object mapping class indices to names"


def read_labels(path: str | os.PathLike, num_classes: int) -> list[str]:
    """The ``num_classes`` class names in ``path``: one a line (blank lines ignored), a JSON list, or a JSON
    object ``{"0": "cat", ...}`` (an id2label mapping) that names every index from 0 to num_classes - 1."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"labels file not found: {path} (expected {LABELS_FORMATS})")
    text = path.read_text(encoding="utf-8")
    names: list[str]
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"labels file {path} is not valid JSON: {err}") from err
        names = _names_of(data, path)
    else:
        names = [line.strip() for line in text.splitlines() if line.strip()]
    if len(names) != num_classes:
        raise ValueError(f"labels file {path} names {len(names)} classes, but the model has {num_classes}")
    return names


def _names_of(data: object, path: Path) -> list[str]:
    if isinstance(data, list) and all(isinstance(name, str) for name in data):
        return list(data)
    if isinstance(data, dict):
        try:
            by_index = {int(index): str(name) for index, name in data.items()}
        except ValueError:
            raise ValueError(
                f"labels file {path}: the keys of a JSON object must be class indices (0, 1, ...)"
            ) from None
        missing = sorted(set(range(len(by_index))) - set(by_index))
        if missing:
            raise ValueError(f"labels file {path} has no name for class indices {missing[:10]}")
        return [by_index[i] for i in range(len(by_index))]
    raise ValueError(f"labels file {path}: expected {LABELS_FORMATS}, got {type(data).__name__}")


def imagenet_labels(num_classes: int) -> list[str] | None:
    """ImageNet's class descriptions (ImageNet-1k, -12k, -21k or -22k variants) for a head of that size, or None.

    The names come with timm (the ``interop`` extra), offline; without timm there are none.
    """
    try:
        from timm.data import ImageNetInfo, infer_imagenet_subset
    except ImportError:  # converting a torchvision or JAX file needs no timm otherwise
        logger.info("no class names: install timm (pip install 'vitkit[interop]') for ImageNet's, or pass --labels")
        return None
    subset = infer_imagenet_subset({"num_classes": num_classes})
    if subset is None:
        return None
    info = ImageNetInfo(subset)
    logger.info("class names: %s's (%d classes); pass --labels FILE if the checkpoint has other classes", subset,
                num_classes)  # fmt: skip
    return [info.index_to_description(i) for i in range(num_classes)]
