"""The data sets vitkit trains on: scikit-learn's digits, image folders, WebDataset shards and torchvision's sets."""

from __future__ import annotations

import logging
import os
import statistics
import time
from collections.abc import Sequence, Sized
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset
from torchvision import datasets

from vitkit.data.augment_config import CACHE_CHOICES, SOURCES, AugmentConfig, default_augment, is_shard_location
from vitkit.data.decode import CentreCropDecoder, Normalise, train_decoder
from vitkit.data.folder_index import FolderIndex
from vitkit.data.images import IMAGE_EXTENSIONS, ImageFile, ImageLoadError, image_file_paths
from vitkit.data.seeded import SeededTransformDataset, TransformedDataset
from vitkit.data.shards import ShardSamples, ShardSet, read_shard_info
from vitkit.data.transforms import (
    build_decode_transform,
    build_eval_transform,
    build_train_transform,
    compute_mean_std,
    eval_transform,
    pixel_statistics,
)
from vitkit.model.config import ViTConfig, to_pair

logger = logging.getLogger(__name__)

FOLDER_EXTENSIONS = IMAGE_EXTENSIONS
_FOLDER_LAYOUT = "DIR/train/<class>/<images> and optionally DIR/val/<class>/<images>"

# torchvision class, native size, native channels, folder torchvision creates under the root
_TORCHVISION = {
    "mnist": (datasets.MNIST, 28, 1, "MNIST/raw"),
    "fashion-mnist": (datasets.FashionMNIST, 28, 1, "FashionMNIST/raw"),
    "cifar10": (datasets.CIFAR10, 32, 3, "cifar-10-batches-py"),
    "cifar100": (datasets.CIFAR100, 32, 3, "cifar-100-python"),
    "svhn": (datasets.SVHN, 32, 3, "train_32x32.mat and test_32x32.mat"),
}


@dataclass
class DataBundle:
    """Everything training needs from a data set: the two splits and how their images were prepared."""

    train: SeededTransformDataset
    val: Dataset
    class_names: list[str]
    in_channels: int
    image_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str
    val_name: str
    augment: AugmentConfig
    # The data decoded once at the training size when it is cached (--cache): (images uint8 (N, C, H, W), labels)
    # of each split. Training then augments whole batches of it (vitkit.data.batch_augment) and reads no files.
    memory: tuple[Tensor, Tensor, Tensor, Tensor] | None = None
    # The training shards when they are streamed (vitkit.data.shards.ShardStream) rather than cached.
    stream: ShardSet | None = None
    # Set when the training set's transform yields uint8 pixels (the image-file decoders of vitkit.data.decode):
    # its batches are normalised by this on the training device, so the workers send a quarter of float32's bytes.
    train_normalise: Normalise | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


# Images the normalisation statistics of an image folder are computed from (a seeded random sample): the mean's
# standard error is then about 1/22 of the spread of the images' own means, and start-up stays short.
FOLDER_STATISTICS_SAMPLES = 500
CACHE_LIMIT_BYTES = 1 << 30  # --cache auto keeps a data set in memory when its decoded pixels fit in 1 GiB


def decode_all(
    dataset: Dataset, size: tuple[int, int], channels: int, workers: int, **resize: Any
) -> tuple[Tensor, Tensor]:
    """Every (image, label) of ``dataset`` as uint8 (N, C, H, W) at ``size`` and int64 labels, decoded in workers;
    ``resize`` (interpolation, crop_pct, crop_mode) as ``build_decode_transform`` takes it."""
    if isinstance(dataset, TensorDataset) and dataset.tensors[0].shape[1:] == (channels, *size):
        return dataset.tensors[0], dataset.tensors[1].long()  # already decoded (the digits)
    decoded = TransformedDataset(dataset, build_decode_transform(size, channels, **resize))
    # A generator of its own: iterating must not draw from torch's global one (the model's initial weights come next).
    loader = DataLoader(decoded, batch_size=256, num_workers=workers, generator=torch.Generator())
    images, labels = zip(*loader, strict=True) if len(decoded) else ((), ())
    return torch.cat(images).as_subclass(Tensor), torch.cat(labels).long()


def _cache_decision(cache: str, count: int, size: tuple[int, int], channels: int) -> bool:
    if cache not in CACHE_CHOICES:
        raise ValueError(f"cache must be one of {CACHE_CHOICES}, got {cache!r}")
    needed = count * channels * size[0] * size[1]
    if cache == "auto" and needed > CACHE_LIMIT_BYTES:
        logger.info("not caching the data set: its %.1f GiB of pixels exceed --cache auto's 1 GiB", needed / 2**30)
    return cache == "on" or (cache == "auto" and needed <= CACHE_LIMIT_BYTES)


class BadImageFilesError(ImageLoadError):
    """A data folder holds files that cannot be trained or evaluated on; the message lists every one."""


class ClassFolder(datasets.ImageFolder):
    """ImageFolder that skips hidden folders and files, survives symbolic-link loops, can be given the class list
    (so a val/eval folder missing a class still uses the training labels), and checks every file up front through
    the folder's index (:mod:`vitkit.data.folder_index`: in ``workers`` processes, only new or changed files): bad
    files fail now, all listed, or are left out with skip_bad_files.

    Samples are (:class:`~vitkit.data.images.ImageFile`, class index): the transform decodes the file, in full
    (:class:`~vitkit.data.transforms.ConvertChannels`) or at the scale its crop needs (:mod:`vitkit.data.decode`).
    """

    samples: list[tuple[str, int]]

    def __init__(
        self,
        root: str | os.PathLike,
        class_names: Sequence[str] | None = None,
        *,
        skip_bad_files: bool = False,
        workers: int = 0,
    ) -> None:
        self.given_classes = list(class_names) if class_names is not None else None
        self.skip_bad_files = skip_bad_files
        self.problems: list[str] = []  # bad files and empty class folders, one line each
        self.files: dict[str, list[str]] = {}
        try:
            super().__init__(str(root), loader=ImageFile, allow_empty=True)
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"{root}: {exc}; expected {root}/<class>/<image files>") from exc
        self.index = FolderIndex(root)
        headers, bad = self.index.check([path for path, _ in self.samples], workers)
        self.problems += bad
        if self.problems and not skip_bad_files:
            listing = "\n".join(f"  {line}" for line in self.problems)
            raise BadImageFilesError(
                f"{root}: {len(self.problems)} bad file(s) or folder(s), found before starting; fix or remove "
                f"them, or pass --skip-bad-files (skip_bad_files=True) to leave them out:\n{listing}"
            )
        if self.problems:
            logger.warning("%s: skipping %d bad file(s) or folder(s):\n  %s", root, len(self.problems),
                           "\n  ".join(self.problems))  # fmt: skip
        kept = [i for i, header in enumerate(headers) if header is not None]
        self.samples = self.imgs = [self.samples[i] for i in kept]
        self.targets = [target for _, target in self.samples]
        self.headers: list[tuple[int, tuple[int, int]]] = [headers[i] for i in kept]  # type: ignore[misc]

    def find_classes(self, directory: str | os.PathLike[str]) -> tuple[list[str], dict[str, int]]:
        found = sorted(e.name for e in os.scandir(directory) if e.is_dir() and not e.name.startswith("."))
        if not found:
            raise FileNotFoundError(f"no class sub-folders in {directory}; expected {directory}/<class>/<image files>")
        classes = found if self.given_classes is None else self.given_classes
        unknown = sorted(set(found) - set(classes))
        if unknown:
            raise ValueError(f"{directory} has class folders {unknown} that are not among the classes {classes}")
        others = 0
        for name in found:
            self.files[name], skipped = image_file_paths(os.path.join(directory, name))
            others += skipped
        if others:
            logger.info("%s: ignoring %d file(s) whose names are not those of images", directory, others)
        empty = [name for name in found if not self.files[name]]
        if empty and self.given_classes is None:  # a training folder: each class must have images
            self.problems += [f"{Path(directory) / name}: class folder holds no image files" for name in empty]
            if self.skip_bad_files:
                classes = [name for name in found if name not in empty]
        return classes, {name: index for index, name in enumerate(classes)}

    def make_dataset(
        self, directory: str, class_to_idx: dict[str, int], *args: Any, **kwargs: Any
    ) -> list[tuple[str, int]]:
        """(path, class index) pairs from the file lists find_classes made, in class then path order."""
        return [(path, index) for name, index in class_to_idx.items() for path in self.files.get(name, [])]


def stratified_split(
    targets: Sequence[int], fraction: float, seed: int, what: str = "the data", classes: Sequence[str] = ()
) -> tuple[list[int], list[int]]:
    """(train, held-out) indices, shuffled, reproducible by seed: each class holds out ``fraction`` of its images
    (rounded, at least one, never all), so small classes are represented on both sides. numpy alone: a folder's
    first start does not pay seconds of scikit-learn's import. ``classes`` names the class indices in errors."""
    labels = np.asarray(targets)
    present, counts = np.unique(labels, return_counts=True)
    too_small = [str(classes[c]) if c < len(classes) else str(c) for c in present[counts < 2]]
    if too_small:
        raise ValueError(
            f"cannot split {what} ({len(labels)} images, {len(present)} classes) with a held-out fraction of "
            f"{fraction}: classes {too_small} have fewer than 2 images. Every class needs at least 2 images, one "
            "for each side; add images or provide a val/ folder"
        )
    held = np.clip(np.floor(counts * fraction + 0.5).astype(np.int64), 1, counts - 1)
    rng = np.random.default_rng(seed)
    train: list[int] = []
    held_out: list[int] = []
    for label, count in zip(present, held, strict=True):
        members = rng.permutation(np.flatnonzero(labels == label))
        held_out.extend(members[:count].tolist())
        train.extend(members[count:].tolist())
    return rng.permutation(train).tolist(), rng.permutation(held_out).tolist()


def _digits(seed: int) -> tuple[Dataset, Dataset, list[str]]:
    """scikit-learn's 1,797 8x8 digits as uint8 (0..16 scaled to 0..255), split 80/20 stratified by seed."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = torch.from_numpy(np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)).unsqueeze(1)  # (N, 1, 8, 8)
    labels = torch.from_numpy(digits.target.astype(np.int64))
    # scikit-learn's stratified split: every digits figure in the docs was measured on it
    train, test = train_test_split(np.arange(len(labels)), test_size=0.2, random_state=seed, stratify=digits.target)
    class_names = [str(int(name)) for name in digits.target_names]
    return TensorDataset(images[train], labels[train]), TensorDataset(images[test], labels[test]), class_names


def scan_folder(folder: ClassFolder) -> tuple[int, int]:
    """(channels, median shorter side) of a folder's images, from their headers: 1 channel only if all are grey."""
    channels = max((image_channels for image_channels, _ in folder.headers), default=1)
    return channels, int(statistics.median_low(min(size) for _, size in folder.headers))


def _length(dataset: Dataset) -> int:
    """The number of samples of a map-style data set (torch's Dataset does not promise a length)."""
    if not isinstance(dataset, Sized):
        raise ValueError(f"expected a data set with a length, got {type(dataset).__name__}")
    return len(dataset)


def _folder(
    data_dir: Path,
    channels: int | None,
    image_size: int | Sequence[int] | None,
    val_fraction: float,
    seed: int,
    skip_bad_files: bool,
    workers: int,
) -> tuple[Dataset, Dataset, list[str], int, int | Sequence[int], str]:
    train_dir, val_dir = data_dir / "train", data_dir / "val"
    if not data_dir.is_dir():
        raise FileNotFoundError(f"data directory {data_dir} does not exist; expected {_FOLDER_LAYOUT}")
    if not train_dir.is_dir():
        found = sorted(p.name for p in data_dir.iterdir() if p.is_dir())[:10]
        raise FileNotFoundError(f"{data_dir} has no train/ folder (found {found}); expected {_FOLDER_LAYOUT}")
    train = ClassFolder(train_dir, skip_bad_files=skip_bad_files, workers=workers)
    if len(train) == 0:
        raise FileNotFoundError(f"{train_dir} holds no readable images; expected {_FOLDER_LAYOUT}")
    class_names = list(train.classes)
    if channels is None or image_size is None:
        scanned_channels, median_side = scan_folder(train)
        channels = channels or scanned_channels
        image_size = image_size or median_side
        logger.info("folder %s: %d channel(s), image size %s", train_dir, channels, image_size)
    if val_dir.is_dir():
        val = ClassFolder(val_dir, class_names, skip_bad_files=skip_bad_files, workers=workers)
        if len(val) == 0:
            raise FileNotFoundError(f"{val_dir} holds no images; expected {_FOLDER_LAYOUT}")
        return train, val, class_names, channels, image_size, "val"
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1) to hold out part of {train_dir}, got {val_fraction!r}")
    train_idx, val_idx = _held_out_split(train, val_fraction, seed)
    logger.info("no %s: holding out %d of %d images (val_fraction=%s)", val_dir, len(val_idx), len(train), val_fraction)
    return Subset(train, train_idx), Subset(train, val_idx), class_names, channels, image_size, "val"


def _shards(location: str, channels: int | None) -> tuple[ShardSamples, ShardSamples, list[str], int, int]:
    """The train and val shards at ``location`` (a folder from `vitkit shard`, or the training shards themselves,
    whose val shards are those listed beside them)."""
    info, given = read_shard_info(location)
    train = given if given is not None else info.splits.get("train")
    val = info.splits.get("val")
    if train is None or val is None or train == val:
        raise ValueError(
            f"{location}: training needs train and val shards (found splits {sorted(info.splits)}); expected the "
            "folder `vitkit shard DIR --out SHARDS` writes, or its train-*.tar shards"
        )
    channels = channels or info.channels
    train_samples, val_samples = ShardSamples(train, channels), ShardSamples(val, channels).load()
    return train_samples, val_samples, list(info.classes), channels, info.image_size


def _torchvision(source: str, root: Path, download: bool) -> tuple[Dataset, Dataset, list[str], int, int]:
    cls, size, channels, expected = _TORCHVISION[source]
    splits = []
    for train in (True, False):
        kwargs = {"split": "train" if train else "test"} if cls is datasets.SVHN else {"train": train}
        try:
            splits.append(cls(str(root), download=download, **kwargs))
        except RuntimeError as exc:
            hint = f"torchvision says: {exc}" if download else "pass download=True (--download) to fetch it"
            raise FileNotFoundError(
                f"{source} not found or corrupted under {root} (expected {root}/{expected}); {hint}"
            ) from exc
    train_set, test_set = splits
    class_names = [str(name) for name in getattr(train_set, "classes", range(10))]  # SVHN has no class list
    return train_set, test_set, class_names, channels, size


def build_data(
    source: str,
    *,
    data_dir: str | os.PathLike | None = None,
    image_size: int | Sequence[int] | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    download: bool = False,
    aug: AugmentConfig | None = None,
    channels: int | None = None,
    cache: str = "auto",
    workers: int = 0,
    skip_bad_files: bool = False,
    preprocessing: ViTConfig | None = None,
) -> DataBundle:
    """Load `source`, split it, and attach the train (seeded augmentation) and eval transforms.

    digits: embedded 8x8 digits, stratified 80/20 by seed, held-out part named "test". folder: `data_dir` in
    ImageFolder layout (DIR/train/<class>, DIR/val/<class>, else a stratified `val_fraction` of train by seed);
    1 channel if every training image is grey, else 3; default size the median shorter side. torchvision sets:
    `data_dir` is their root, their test split is the held-out one. Normalisation statistics come from the training
    images at the training size; `aug` None means default_augment(source). A folder's images are all decoded once
    first: a bad file raises BadImageFilesError listing every one, or is left out with `skip_bad_files`. `cache` "on"
    (or "auto", when the pixels fit in 1 GiB) decodes both splits once, in `workers` processes, and keeps them in
    memory. `preprocessing`, a model's config, gives the mean, std and evaluation resize (interpolation, crop) to use
    instead of the data's statistics and a plain resize: what fine-tuning a model keeps of its source.
    """
    if source not in SOURCES:
        raise ValueError(f"unknown data source {source!r}; expected one of {list(SOURCES)}")
    if channels is not None and channels not in (1, 3):
        raise ValueError(f"channels must be 1, 3 or None (the data set's own), got {channels!r}")
    if image_size is not None:
        to_pair(image_size, "image_size")  # fail early on a bad size, before any loading
    native_size: int | Sequence[int]
    shard_samples: ShardSamples | None = None  # the training shards, when streaming is possible
    if source == "digits":
        if data_dir is not None:
            raise ValueError(f"the digits data set is embedded and takes no data_dir (got {data_dir}); use 'folder'")
        train_base, val_base, class_names = _digits(seed)
        native_channels, native_size, val_name = 1, 8, "test"
    elif data_dir is None:
        raise ValueError(f"data source {source!r} needs data_dir (the folder holding it)")
    elif source == "folder":
        train_base, val_base, class_names, native_channels, native_size, val_name = _folder(
            Path(data_dir), channels, image_size, val_fraction, seed, skip_bad_files, workers
        )
    elif source == "shards":
        shard_samples, val_base, class_names, native_channels, native_size = _shards(str(data_dir), channels)
        train_base, val_name = shard_samples, "val"
    else:
        train_base, val_base, class_names, native_channels, native_size = _torchvision(source, Path(data_dir), download)
        val_name = "test"
    channels = channels or native_channels
    size = to_pair(image_size or native_size, "image_size")
    aug = aug if aug is not None else default_augment(source)
    resize: dict[str, Any] = {}
    if preprocessing is not None:
        resize = {name: getattr(preprocessing, name) for name in ("interpolation", "crop_pct", "crop_mode")}
    memory = None
    if _cache_decision(cache, _length(train_base) + _length(val_base), size, channels):
        started = time.perf_counter()
        if shard_samples is not None:
            shard_samples.load()
        memory = (
            *decode_all(train_base, size, channels, workers), *decode_all(val_base, size, channels, workers, **resize)
        )  # fmt: skip
        logger.info("decoded %d images into memory in %.1f s", _length(train_base) + _length(val_base),
                    time.perf_counter() - started)  # fmt: skip
        train_base, val_base = TensorDataset(*memory[:2]), TensorDataset(*memory[2:])  # no file is read again
    if preprocessing is not None and preprocessing.mean is not None and preprocessing.std is not None:
        mean, std = preprocessing.mean, preprocessing.std
    elif memory is not None:  # every training image, as the model sees them (before normalisation)
        pixels = memory[0].transpose(0, 1).flatten(1).double() / 255
        mean, std = pixel_statistics(pixels.sum(1), pixels.square().sum(1), pixels.shape[1])
    elif shard_samples is not None:  # from the first shards (their writer shuffled the samples): none other is read
        statistics_base = ShardSamples(shard_samples.shards.head(2000), channels)
        mean, std = compute_mean_std(statistics_base, size, channels, seed=seed, workers=workers)
    else:
        mean, std = _statistics(train_base, size, channels, seed, workers)
    logger.info(
        "%s: %d train / %d %s images, %d classes, %d channel(s), size %s, mean %s, std %s",
        *(source, _length(train_base), _length(val_base), val_name, len(class_names), channels, size),
        *([round(m, 4) for m in mean], [round(s, 4) for s in std]),
    )
    train_transform, val_transform, train_normalise = _transforms(
        source, memory is None, size, channels, mean, std, aug, resize
    )
    return DataBundle(
        train=SeededTransformDataset(train_base, train_transform, seed),
        val=TransformedDataset(val_base, val_transform),
        class_names=class_names,
        in_channels=channels,
        image_size=size,
        mean=mean,
        std=std,
        source=source,
        val_name=val_name,
        augment=aug,
        memory=memory,
        stream=shard_samples.shards if shard_samples is not None and memory is None else None,
        train_normalise=train_normalise,
    )


def _transforms(
    source: str, files: bool, size: tuple[int, int], channels: int, mean: tuple[float, ...],
    std: tuple[float, ...], aug: AugmentConfig, resize: dict[str, Any],
) -> tuple[Any, Any, Normalise | None]:  # fmt: skip
    """(train, eval) transforms (``resize``: the evaluation's interpolation and crop), and the normalisation left
    for the training device when the train transform yields uint8 pixels: on image files, decoders that decode only
    what the crop needs where the augmentation allows (:mod:`vitkit.data.decode`), else the transforms.v2
    pipelines."""
    train = build_train_transform(size, channels, mean, std, aug)
    val = build_eval_transform(size, channels, mean, std, **resize)
    if source != "folder" or not files:
        return train, val, None
    fast_train = train_decoder(size, channels, mean, std, aug)
    logger.info("decoding image files at the scale each crop needs (vitkit.data.decode): evaluation%s",
                " and training" if fast_train else "; training through transforms.v2 (its augmentation needs "
                "the whole decoded image)")  # fmt: skip
    eval_decoder = CentreCropDecoder(size, channels, mean, std, **resize)
    if fast_train is None:
        return train, eval_decoder, None
    return fast_train.pixels, eval_decoder, fast_train.normalise


def folder_mean_std(
    dataset: Dataset, size: tuple[int, int], channels: int, seed: int = 0, workers: int = 0
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """compute_mean_std of FOLDER_STATISTICS_SAMPLES images of an image folder (a ClassFolder or a Subset of one),
    each decoded at the training size as evaluation decodes a file (:class:`CentreCropDecoder`: libjpeg's DCT
    scaling where the file is large, half the time per image of a full decode and resize)."""
    in_unit_range = CentreCropDecoder(size, channels, (0.0,) * channels, (1.0,) * channels)  # x / 255
    return compute_mean_std(dataset, size, channels, FOLDER_STATISTICS_SAMPLES, seed, workers, in_unit_range)


def _statistics(
    dataset: Dataset, size: tuple[int, int], channels: int, seed: int, workers: int
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """compute_mean_std in ``workers`` processes; for an image folder, kept in (and read from) its index."""
    base, indices = (dataset.dataset, dataset.indices) if isinstance(dataset, Subset) else (dataset, None)
    if not isinstance(base, ClassFolder):
        return compute_mean_std(dataset, size, channels, seed=seed, workers=workers)
    paths = [base.samples[i][0] for i in (range(len(base)) if indices is None else indices)]
    key = base.index.fingerprint(paths, "statistics", list(size), channels, seed, FOLDER_STATISTICS_SAMPLES)
    if key in base.index.computed:
        mean, std = base.index.computed[key]
        logger.info("normalisation statistics of %s from its index %s", base.root, base.index.file)
        return tuple(mean), tuple(std)
    mean, std = folder_mean_std(dataset, size, channels, seed, workers)
    base.index.computed[key] = [list(mean), list(std)]
    base.index.save()
    return mean, std


def _held_out_split(folder: ClassFolder, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """stratified_split of a folder's samples, kept in (and read from) its index."""
    key = folder.index.fingerprint([path for path, _ in folder.samples], "stratified split", fraction, seed)
    if key not in folder.index.computed:
        folder.index.computed[key] = stratified_split(folder.targets, fraction, seed, str(folder.root), folder.classes)
        folder.index.save()
    train, held_out = folder.index.computed[key]
    return train, held_out


def build_folder_eval_data(
    data_dir: str | os.PathLike, config: ViTConfig, skip_bad_files: bool = False, workers: int = 0
) -> TransformedDataset:
    """An image folder prepared as a model with `config` expects (`eval_transform`), labelled with its class names.

    `data_dir` is DIR/<class>/<images>; a training folder (DIR/val/<class>) is accepted too, its val/ part used.
    Class folders may be missing (no images of that class), but an unknown class folder is an error. Files whose
    check fails (:class:`ClassFolder`, in ``workers`` processes) raise BadImageFilesError listing every one before
    any evaluation, or are left out with `skip_bad_files`. Images are decoded at the scale the crop needs
    (:mod:`vitkit.data.decode`). WebDataset shards (`vitkit shard`'s folder, patterns, URLs) are read too: the
    shards named, else the val shards.
    """
    if not config.num_classes:
        raise ValueError("the model has no classification head (num_classes is 0); it cannot be evaluated on labels")
    class_names = config.labels
    if is_shard_location(data_dir):
        return TransformedDataset(_eval_shards(str(data_dir), config.in_channels, class_names), eval_transform(config))
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"evaluation folder {data_dir} does not exist; expected {data_dir}/<class>/<images>")
    subdirs = {p.name for p in data_dir.iterdir() if p.is_dir() and not p.name.startswith(".")}
    if not subdirs <= set(class_names) and (data_dir / "val").is_dir():
        data_dir = data_dir / "val"
    folder = ClassFolder(data_dir, class_names, skip_bad_files=skip_bad_files, workers=workers)
    if len(folder) == 0:
        raise FileNotFoundError(f"{data_dir} holds no images; expected {data_dir}/<class>/<images>")
    mean, std = config.mean, config.std
    if mean is None or std is None:
        return TransformedDataset(folder, eval_transform(config))  # which warns about the missing statistics
    decoder = CentreCropDecoder(config.image_size, config.in_channels, mean, std, interpolation=config.interpolation,
                                crop_pct=config.crop_pct, crop_mode=config.crop_mode)  # fmt: skip
    return TransformedDataset(folder, decoder)


def _eval_shards(location: str, channels: int, class_names: Sequence[str]) -> ShardSamples:
    """The shards named at ``location``, else its val shards (else its train shards), labelled as the model is."""
    info, given = read_shard_info(location)
    shards = given or info.splits.get("val") or info.splits.get("train")
    if shards is None:
        raise ValueError(f"{location}: no shards to evaluate on (its splits: {sorted(info.splits)})")
    unknown = sorted(set(info.classes) - set(class_names))
    if unknown:
        raise ValueError(f"{location} has classes {unknown} that are not among the model's classes {list(class_names)}")
    return ShardSamples(shards, channels, [list(class_names).index(name) for name in info.classes])
