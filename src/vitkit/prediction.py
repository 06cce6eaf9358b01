"""Class predictions for image files: what `vitkit predict` prints, as a library function.

One bad file must not stop the others, so every failure becomes a result with an "error" field
instead of an exception.
"""

from __future__ import annotations

import os
import tarfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor

from vitkit.data import decode_image, eval_transform, find_image_files, load_image
from vitkit.data.augment_config import is_shard_location
from vitkit.data.shards import read_samples, read_shard_info
from vitkit.data.sources import FOLDER_EXTENSIONS
from vitkit.evaluation import class_names_of
from vitkit.model import VisionTransformer


def expand_paths(paths: Iterable[str | os.PathLike]) -> Iterator[tuple[Path, str | None]]:
    """Yield (file, None) for each image to predict, or (path, error message) for a path that cannot be.

    Folders are searched recursively for files with an image extension, in sorted order, skipping
    hidden files (symbolic-link loops cannot make the search endless); files named explicitly are kept whatever
    their extension, so a wrong file is reported rather than silently skipped.
    """
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found, _ = find_image_files(path)
            if not found:
                yield path, f"no image files found in folder {path} (looked for {', '.join(FOLDER_EXTENSIONS)})"
            for file in found:
                yield file, None
        elif path.exists() or path.is_symlink():
            yield path, None  # load_image says what is wrong with a FIFO, a broken link, ...
        else:
            yield path, f"no such file or folder: {path}"


def _images(
    paths: Iterable[str | os.PathLike], channels: int
) -> Iterator[tuple[Path | str, Callable[[], Image.Image] | str]]:
    """(name, image loader or error message) of each image to predict: files, folders, and the samples of shards
    (named SHARD#KEY; a folder from `vitkit shard` gives all its splits)."""
    for raw in paths:
        if not is_shard_location(raw):
            for path, error in expand_paths([raw]):
                yield path, error if error is not None else partial(load_image, path, channels)
            continue
        try:
            info, given = read_shard_info(raw)
            urls = given.urls if given is not None else [url for split in info.splits.values() for url in split.urls]
            for url in urls:
                for _, sample in read_samples(url):
                    yield sample.name, partial(decode_image, sample.image, channels, sample.name)
        except (ValueError, OSError, tarfile.TarError) as err:
            yield str(raw), f"cannot read the shards {raw}: {err}"


def top_k_classes(logits: Tensor, names: Sequence[str], k: int) -> list[list[dict[str, Any]]]:
    """Per image, the k most probable classes as [{"class": name, "probability": p}, ...], best first."""
    values, indices = logits.float().softmax(dim=1).topk(min(k, logits.shape[1]), dim=1)
    return [
        [{"class": names[i], "probability": round(p, 6)} for p, i in zip(row_values, row_indices)]
        for row_values, row_indices in zip(values.tolist(), indices.tolist())
    ]


@torch.inference_mode()
def predict_files(
    model: VisionTransformer,
    paths: Iterable[str | os.PathLike],
    top_k: int = 5,
    *,
    batch_size: int = 64,
    device: torch.device | str | None = None,
) -> Iterator[dict[str, Any]]:
    """Predict each image in ``paths`` (files, folders or WebDataset shards), yielding one dict per image in order.

    A result is {"path": str, "top_k": [{"class": name, "probability": p}, ...]} with the best
    min(top_k, num_classes) classes, or {"path": str, "error": message} for a path that is missing or
    not a readable image. Images are decoded one by one and run through the model in batches.
    """
    if top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if model.num_classes < 1:
        raise ValueError("this model has no classification head (num_classes is 0); it cannot predict classes")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    names = class_names_of(model)
    k = min(top_k, model.num_classes)
    transform = eval_transform(model.config)
    channels = model.in_channels
    was_training = model.training
    model.eval()

    def run(pending: list[tuple[Path | str, Tensor | str]]) -> Iterator[dict[str, Any]]:
        images = [item for _, item in pending if isinstance(item, Tensor)]
        if images:
            best = iter(top_k_classes(model(torch.stack(images).to(device)), names, k))
        for path, item in pending:
            if isinstance(item, str):
                yield {"path": str(path), "error": item}
            else:
                yield {"path": str(path), "top_k": next(best)}

    pending: list[tuple[Path | str, Tensor | str]] = []
    num_images = 0
    try:
        for path, image in _images(paths, channels):
            if isinstance(image, str):
                pending.append((path, image))
            else:
                try:
                    pending.append((path, transform(image())))
                    num_images += 1
                except (ValueError, OSError) as err:  # ImageLoadError is a ValueError
                    pending.append((path, str(err)))
            if num_images == batch_size:
                yield from run(pending)
                pending, num_images = [], 0
        yield from run(pending)
    finally:
        model.train(was_training)
