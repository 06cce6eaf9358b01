"""How fast an image folder feeds training: start-up seconds (scan, check, statistics; cold and with the folder's
index) and training-input images/s at a given size beside timm's loader, rounds interleaved in one process.

What vitkit measures is what ``vitkit train`` runs: :class:`vitkit.data.ClassFolder` through the folder index and
:func:`vitkit.data.decode.train_decoder` (random resized crop + flip) in a ``DataLoader`` with ``workers``
processes, each batch sent as uint8 and normalised in the training process. The peers get the same files, workers,
batch size and sample order: timm's ``create_transform(size, is_training=True)`` (random resized crop with a random
interpolation, flip, colour jitter 0.4, normalise), the same without colour jitter (the augmentation vitkit's
folder default has), and vitkit's transforms.v2 pipeline on fully decoded images (what ran before the decoder).
"""

from __future__ import annotations

import importlib.util
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from vitkit.data.augment_config import default_augment
from vitkit.data.decode import train_decoder
from vitkit.data.folder_index import FolderIndex
from vitkit.data.images import image_file_paths
from vitkit.data.seeded import SeededTransformDataset
from vitkit.data.sources import ClassFolder, folder_mean_std
from vitkit.data.transforms import build_train_transform

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _train_dir(data_dir: Path) -> Path:
    return data_dir / "train" if (data_dir / "train").is_dir() else data_dir


def _seconds(fn: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


def startup_seconds(data_dir: str | os.PathLike, workers: int, image_size: int = 224) -> dict[str, float]:
    """Seconds of each start-up stage of an image folder, first with an empty index, then with the index.

    scan: listing the class folders' image files (what torchvision's ImageFolder does); check: the folder index's
    checks of new or changed files (all of them the first time); statistics: the normalisation statistics
    (decoded in ``workers`` processes the first time, read from the index after). A temporary cache is used, so
    the user's index is neither read nor changed.
    """
    root = _train_dir(Path(data_dir))
    scan, paths = _seconds(lambda: [p for c in sorted(os.scandir(root), key=lambda e: e.name) if c.is_dir()
                                    for p in image_file_paths(c.path)[0]])  # fmt: skip
    with tempfile.TemporaryDirectory() as cache:
        check, _ = _seconds(lambda: FolderIndex(root, cache).check(paths, workers))
        check_again, _ = _seconds(lambda: FolderIndex(root, cache).check(paths, workers))
        folder = _with_cache(cache, lambda: ClassFolder(root, workers=workers))
        stats, _ = _seconds(lambda: folder_mean_std(folder, (image_size, image_size), 3, workers=workers))
    return {"files": len(paths), "scan_s": scan, "check_s": check, "statistics_s": stats,
            "check_with_index_s": check_again}  # fmt: skip


def _with_cache(cache: str, build: Callable[[], Any]) -> Any:
    """``build()`` with VITKIT_CACHE_DIR pointing at ``cache``."""
    previous = os.environ.get("VITKIT_CACHE_DIR")
    os.environ["VITKIT_CACHE_DIR"] = cache
    try:
        return build()
    finally:
        if previous is None:
            del os.environ["VITKIT_CACHE_DIR"]
        else:
            os.environ["VITKIT_CACHE_DIR"] = previous


class _Images(Dataset):
    """(transform(PIL image), label) of (path, label) samples: torchvision's ImageFolder loading, for the peers."""

    def __init__(self, samples: list[tuple[str, int]], transform: Callable[[Any], torch.Tensor]) -> None:
        self.samples, self.transform = samples, transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        from torchvision.datasets.folder import default_loader

        path, label = self.samples[index]
        return self.transform(default_loader(path)), label


class Pipeline(NamedTuple):
    """A training-input pipeline: per-sample (image, label) in the workers, then ``finish`` on each batch in the
    training process (vitkit's normalisation of uint8 batches; None: the batch is ready)."""

    dataset: Dataset
    finish: Callable[[torch.Tensor], torch.Tensor] | None = None


def training_loaders(folder: ClassFolder, image_size: int, seed: int = 0) -> dict[str, Pipeline]:
    """The training-input pipelines compared, each ending in batches of (normalised images, labels) over ``folder``."""
    aug = default_augment("folder", crop_scale_min=0.08)  # ImageNet's crop scale, as timm's default
    decoder = train_decoder(image_size, 3, IMAGENET_MEAN, IMAGENET_STD, aug)
    if decoder is None:
        raise ValueError(f"expected the folder augmentation {aug} to decode as one random resized crop, it does not")
    pipelines = {
        "vitkit": Pipeline(SeededTransformDataset(folder, decoder.pixels, seed), decoder.normalise),
        "vitkit transforms.v2": Pipeline(
            SeededTransformDataset(folder, build_train_transform(image_size, 3, IMAGENET_MEAN, IMAGENET_STD, aug), seed)
        ),  # fmt: skip
    }
    if importlib.util.find_spec("timm") is not None:
        from timm.data import create_transform

        pipelines["timm"] = Pipeline(_Images(folder.samples, create_transform(image_size, is_training=True)))
        no_jitter = create_transform(image_size, is_training=True, color_jitter=0.0)
        pipelines["timm, no colour jitter"] = Pipeline(_Images(folder.samples, no_jitter))
    return pipelines


def _images_per_s(pipeline: Pipeline, order: list[int], workers: int, batch_size: int, batches: int) -> float:
    """Images/s of ``batches`` batches after the first (the first waits for the workers to start), each finished
    in this process as training would."""
    loader = DataLoader(Subset(pipeline.dataset, order), batch_size=batch_size, num_workers=workers, drop_last=True,
                        persistent_workers=False)  # fmt: skip
    finish = pipeline.finish or (lambda images: images)
    iterator = iter(loader)
    finish(next(iterator)[0])
    started = time.perf_counter()
    for _ in range(batches):
        finish(next(iterator)[0])
    seconds = time.perf_counter() - started
    del iterator
    return batches * batch_size / seconds


def compare_training_input(
    data_dir: str | os.PathLike,
    workers: int,
    image_size: int = 224,
    batch_size: int = 64,
    batches: int = 8,
    rounds: int = 3,
    labels: Iterable[str] | None = None,
) -> dict[str, Any]:
    """Median images/s of each training-input pipeline over ``rounds`` interleaved rounds (each round starts one
    pipeline further down the list), with each one's ratio to timm's; the same random sample order for all, its
    files read once before the round so that every pipeline finds them in the page cache."""
    folder = ClassFolder(_train_dir(Path(data_dir)), workers=workers)
    pipelines = training_loaders(folder, image_size)
    if labels is not None:
        pipelines = {label: pipelines[label] for label in labels if label in pipelines}
    needed = (batches + 1) * batch_size
    if len(folder) < needed:
        raise ValueError(f"{data_dir} has {len(folder)} images; timing {batches} + 1 batches of {batch_size} "
                         f"needs {needed}")  # fmt: skip
    names = list(pipelines)
    measured: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(rounds):
        order = torch.randperm(len(folder), generator=torch.Generator().manual_seed(round_index))[:needed].tolist()
        for index in order:  # into the page cache first: the round's first pipeline does not read the disk for all
            Path(folder.samples[index][0]).read_bytes()
        start = round_index % len(names)
        for name in names[start:] + names[:start]:
            measured[name].append(_images_per_s(pipelines[name], order, workers, batch_size, batches))
    rates = {name: statistics.median(values) for name, values in measured.items()}
    timm = rates.get("timm")
    rows = [{"label": name, "images_per_s": rate, "rounds": measured[name],
             "ratio_to_timm": rate / timm if timm else None} for name, rate in rates.items()]  # fmt: skip
    return {"image_size": image_size, "batch_size": batch_size, "workers": workers, "batches": batches,
            "rounds": rounds, "files": len(folder), "rows": rows}  # fmt: skip
