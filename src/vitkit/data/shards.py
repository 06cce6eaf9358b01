"""WebDataset tar shards: writing an image folder into them and reading them back, locally or from URLs.

A shard is a tar file in WebDataset's format: each sample is the image file's bytes as stored (``KEY.jpg``,
``KEY.png`` ...) and its class index as text (``KEY.cls``), one after the other. ``shards.json`` beside the shards
names the classes, the images' channels and median size, and each split's shards with their sample counts: a
reader knows the size of an epoch without reading a shard.

Training streams the training shards (:class:`ShardStream`): each epoch's samples are assigned by a function of
(seed, epoch), so every process gets the same number of batches and a resume continues at its step:

1. the shards are put in an order drawn from (seed, epoch) and their samples laid end to end;
2. process r of N takes the r-th of N equal consecutive parts, each a whole number of its batches; the remainder
   (fewer than N batches' worth) is left out of that epoch, and the run logs how many samples that is;
3. within its part, a process shuffles blocks of :data:`SHUFFLE_BLOCK` consecutive samples, seeded by
   (seed, epoch, rank).

Shards are read in order, each once per epoch and process, so they may sit in object storage. The writer shuffles
the samples before writing (seeded), so that every shard mixes the classes.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import tarfile
from collections.abc import Callable, Container, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, cast

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset, default_collate, get_worker_info

from vitkit.data.augment_config import SHARDS_INFO
from vitkit.data.gpu_decode import collate_encoded, encoded
from vitkit.data.images import IMAGE_EXTENSIONS, decode_image
from vitkit.data.seeded import sample_seed, seeded_transform
from vitkit.io import atomic_path, write_json

if TYPE_CHECKING:
    from vitkit.data.sources import ClassFolder, DataBundle

logger = logging.getLogger(__name__)

SHUFFLE_BLOCK = 4096  # consecutive samples of a process's part that are shuffled together
SPLITS = ("train", "val")
_IMAGE_SUFFIXES = {ext.lstrip(".").lower() for ext in IMAGE_EXTENSIONS}
_KEY = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")  # WebDataset's key.extension split of a member name


@dataclass(frozen=True)
class ShardSet:
    """Shards (paths or URLs) and how many samples each holds."""

    urls: tuple[str, ...]
    counts: tuple[int, ...]

    @property
    def total(self) -> int:
        return sum(self.counts)

    def head(self, samples: int) -> ShardSet:
        """The first shards, as many as hold ``samples`` samples (all if they hold fewer)."""
        ends = np.cumsum(self.counts)
        keep = int(np.searchsorted(ends, samples)) + 1
        return ShardSet(self.urls[:keep], self.counts[:keep])


@dataclass(frozen=True)
class ShardInfo:
    """What ``shards.json`` says: class names, channels (1 only if every image is grey), median shorter side."""

    classes: tuple[str, ...]
    channels: int
    image_size: int
    splits: dict[str, ShardSet]


# --- writing -------------------------------------------------------------------------------------


def write_shards(
    data_dir: str | os.PathLike,
    out: str | os.PathLike,
    shard_size: int = 1000,
    *,
    val_fraction: float = 0.1,
    seed: int = 0,
    skip_bad_files: bool = False,
    workers: int = 0,
) -> dict[str, Any]:
    """Write the image folder ``data_dir`` (DIR/train/<class>/..., optionally DIR/val/<class>/...) as WebDataset
    shards ``out/train-000000.tar`` ... and ``out/val-000000.tar`` ..., ``shard_size`` samples each, plus
    ``out/shards.json``; returns what ``shards.json`` holds.

    Images are stored as they are (no re-encoding), in an order shuffled by ``seed``. Every image is checked first
    (as training on the folder would, in ``workers`` processes): a bad file fails, listing every one, or is left out
    with ``skip_bad_files``.
    Without val/, a stratified ``val_fraction`` of train/ (by ``seed``) becomes the val shards: the images that
    training on the folder holds out.
    """
    from vitkit.data.sources import _folder, _scan_folder

    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size!r}")
    train, val, class_names, _, _, _ = _folder(Path(data_dir), 3, 0, val_fraction, seed, skip_bad_files, workers)
    folder = train.dataset if isinstance(train, torch.utils.data.Subset) else train
    channels, median_side = _scan_folder(cast("ClassFolder", folder))  # _folder splits a ClassFolder
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    info: dict[str, Any] = {"format": "webdataset", "classes": class_names, "channels": channels,
                            "image_size": median_side, "splits": {}}  # fmt: skip
    rng = np.random.default_rng(seed)
    for split, dataset in zip(SPLITS, (train, val), strict=True):
        samples = _file_samples(dataset)
        order = rng.permutation(len(samples))
        shards = []
        for number, start in enumerate(range(0, len(order), shard_size)):
            name = f"{split}-{number:06d}.tar"
            chunk = [samples[i] for i in order[start : start + shard_size]]
            _write_tar(out / name, [(f"{split}{start + i:08d}", path, label) for i, (path, label) in enumerate(chunk)])
            shards.append({"name": name, "samples": len(chunk)})
        counts = np.bincount([label for _, label in samples], minlength=len(class_names))
        info["splits"][split] = {"shards": shards, "class_counts": dict(zip(class_names, counts.tolist()))}
    write_json(info, out / SHARDS_INFO)
    return info


def _file_samples(dataset: Dataset) -> list[tuple[str, int]]:
    """(path, class index) of each image of a ClassFolder or a Subset of one."""
    if isinstance(dataset, torch.utils.data.Subset):
        samples = cast("ClassFolder", dataset.dataset).samples
        return [samples[i] for i in dataset.indices]
    return list(cast("ClassFolder", dataset).samples)


def _write_tar(path: Path, samples: Sequence[tuple[str, str, int]]) -> None:
    """One shard, written atomically; members carry no owner or time, so the same folder gives the same bytes."""

    def add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
        member = tarfile.TarInfo(name)
        member.size, member.mode = len(data), 0o444
        tar.addfile(member, io.BytesIO(data))

    with atomic_path(path) as tmp, tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
        for key, file, label in samples:
            add(tar, f"{key}.{Path(file).suffix.lstrip('.').lower()}", Path(file).read_bytes())
            add(tar, f"{key}.cls", str(label).encode())


# --- finding shards ------------------------------------------------------------------------------


def _is_url(location: str) -> bool:
    return "://" in location or location.startswith("pipe:")


def expand_locations(location: str) -> list[str]:
    """Shard paths or URLs from a brace pattern (``shards/train-{000000..000009}.tar``), several of them separated by
    ``::`` (as WebDataset writes them), or a text file listing one per line."""
    from braceexpand import braceexpand

    if location.endswith(".txt") and Path(location).is_file():
        return [line.strip() for line in Path(location).read_text().splitlines() if line.strip()]
    return [url for part in location.split("::") if part.strip() for url in braceexpand(part.strip())]


def _shard_path(url: str) -> str:
    """The shard's own path or URL: in a ``pipe:`` command, the word that ends in .tar."""
    return next((word for word in url.split() if word.endswith(".tar")), url) if url.startswith("pipe:") else url


def _name(url: str) -> str:
    return _shard_path(url).rsplit("/", 1)[-1]


def _sibling(url: str, name: str) -> str:
    """The file ``name`` beside the shard ``url`` (for a ``pipe:`` command, the same command reading that file)."""
    path = _shard_path(url)
    parent = path.rsplit("/", 1)[0] if "/" in path else "."
    return url.replace(path, f"{parent}/{name}")


def open_stream(url: str) -> IO[bytes]:
    """A readable binary stream of a local path or a URL (http(s)://, pipe:COMMAND ..., through WebDataset's gopen)."""
    if not _is_url(url) or url.startswith("file://"):
        path = Path(url.removeprefix("file://"))
        if not path.is_file():
            raise FileNotFoundError(f"shard {path} does not exist")
        return path.open("rb")
    import webdataset

    return webdataset.gopen(url, "rb")


def read_shard_info(location: str | os.PathLike) -> tuple[ShardInfo, ShardSet | None]:
    """The shard set at ``location`` and, when ``location`` names shards (a pattern, a list, URLs) rather than a
    folder, those shards: their counts come from the ``shards.json`` beside the first of them."""
    location = str(location)
    given: list[str] | None = None
    if Path(location).is_dir():
        beside = str(Path(location) / SHARDS_INFO)
    else:
        given = expand_locations(location)
        if not given:
            raise ValueError(f"no shards in {location!r}; expected a folder holding {SHARDS_INFO} or shard paths")
        beside = given[0]
    info_url = _sibling(beside, SHARDS_INFO)
    try:
        with open_stream(info_url) as stream:
            raw = json.load(stream)
    except (OSError, ValueError) as err:
        raise FileNotFoundError(
            f"cannot read {info_url} ({err}): shards need the {SHARDS_INFO} that `vitkit shard` writes beside them"
        ) from err
    splits = {
        split: ShardSet(tuple(_sibling(beside, s["name"]) for s in entry["shards"]),
                        tuple(int(s["samples"]) for s in entry["shards"]))
        for split, entry in raw["splits"].items()
    }  # fmt: skip
    info = ShardInfo(tuple(raw["classes"]), int(raw["channels"]), int(raw["image_size"]), splits)
    if given is None:
        return info, None
    counts = {_name(url): count for s in splits.values() for url, count in zip(s.urls, s.counts)}
    unknown = [url for url in given if _name(url) not in counts]
    if unknown:
        raise ValueError(f"{info_url} does not list the shard(s) {unknown[:5]}; expected some of {sorted(counts)[:5]}")
    return info, ShardSet(tuple(given), tuple(counts[_name(url)] for url in given))


# --- reading samples -----------------------------------------------------------------------------


@dataclass
class Sample:
    """One sample of a shard: where it is, its image file's bytes and extension, and its class index."""

    name: str  # shard#key
    image: bytes
    extension: str
    label: int


def read_samples(url: str, wanted: Container[int] | None = None) -> Iterator[tuple[int, Sample]]:
    """(index in the shard, sample) of each sample of the shard ``url`` (only those ``wanted``), in order.

    A local shard is read with seeks past the samples not wanted; a URL is streamed.
    """
    stream = open_stream(url)
    seekable = getattr(stream, "seekable", lambda: False)()  # WebDataset's pipes have no seekable()
    with stream, tarfile.open(fileobj=stream, mode="r:" if seekable else "r|") as tar:
        index, key = -1, None
        parts: dict[str, bytes] = {}  # extension -> bytes of the current sample's files
        for member in tar:
            match = _KEY.match(member.name)
            if not member.isfile() or match is None:
                continue
            if match.group(1) != key:
                if key is not None and parts:
                    yield index, _sample(url, key, parts)
                index, key, parts = index + 1, match.group(1), {}
            if wanted is None or index in wanted:
                content = cast(IO[bytes], tar.extractfile(member))  # a regular file (isfile above) always has one
                parts[match.group(2).lower()] = content.read()
        if key is not None and parts:
            yield index, _sample(url, key, parts)


def _sample(url: str, key: str, parts: dict[str, bytes]) -> Sample:
    name = f"{url}#{key}"
    images = [ext for ext in parts if ext in _IMAGE_SUFFIXES]
    if not images or "cls" not in parts:
        raise ValueError(f"shard sample {name} has parts {sorted(parts)}; expected an image file and a .cls")
    try:
        label = int(parts["cls"].decode().strip())
    except ValueError as err:
        raise ValueError(f"shard sample {name}: .cls holds {parts['cls'][:20]!r}, expected a class index") from err
    return Sample(name, parts[images[0]], images[0], label)


@dataclass(frozen=True)
class _Located:
    """Where a local shard holds one sample's image file (its bytes are read when asked for), and its class."""

    name: str  # shard#key
    path: str
    offset: int
    size: int
    extension: str
    label: int

    @property
    def image(self) -> bytes:
        with open(self.path, "rb") as file:
            file.seek(self.offset)
            return file.read(self.size)


def locate_samples(url: str) -> list[_Located]:
    """Each sample of the local shard ``url`` (a path or file:// URL): where its image file lies in the tar, and its
    class index (the one part read now), so that a data set of shards need not hold every image's bytes in memory."""
    located: list[_Located] = []
    path = url.removeprefix("file://")
    with tarfile.open(path, mode="r:") as tar:
        key: str | None = None
        parts: dict[str, bytes] = {}  # the current sample's .cls bytes
        where: dict[str, tuple[int, int]] = {}  # (offset, size) in the tar of each of its files

        def finish() -> None:
            if key is None or not where:
                return
            sample = _sample(url, key, {**{ext: b"" for ext in where}, **parts})  # checks the parts, reads .cls
            located.append(_Located(sample.name, path, *where[sample.extension], sample.extension, sample.label))

        for member in tar:
            match = _KEY.match(member.name)
            if not member.isfile() or match is None:
                continue
            if match.group(1) != key:
                finish()
                key, parts, where = match.group(1), {}, {}
            extension = match.group(2).lower()
            if extension == "cls":
                parts["cls"] = cast(IO[bytes], tar.extractfile(member)).read()
            where[extension] = (member.offset_data, member.size)
        finish()
    return located


class ShardSamples(Dataset):
    """Indexed access to a shard set's samples as (PIL image, class index): for validation, evaluation and caching.

    The shards are read once, on first access: local shards for where each sample lies (its bytes are read when
    the sample is), shards at URLs in whole, their samples' bytes kept in memory. ``label_map`` renumbers the
    classes (to those of a model).
    """

    def __init__(self, shards: ShardSet, channels: int, label_map: Sequence[int] | None = None) -> None:
        self.shards, self.channels, self.label_map = shards, channels, label_map
        self._samples: list[Sample | _Located] | None = None

    def __len__(self) -> int:
        return self.shards.total

    def load(self) -> ShardSamples:
        """Read the shards now (before DataLoader workers start, which then share what was read)."""
        self.samples()
        return self

    def samples(self) -> list[Sample | _Located]:
        if self._samples is None:
            self._samples = []
            for url in self.shards.urls:
                if not _is_url(url) or url.startswith("file://"):
                    self._samples += locate_samples(url)
                else:
                    self._samples += [sample for _, sample in read_samples(url)]
            if len(self._samples) != self.shards.total:
                raise ValueError(
                    f"the shards {self.shards.urls[:3]}... hold {len(self._samples)} samples, their {SHARDS_INFO} "
                    f"says {self.shards.total}: the shards changed since it was written"
                )
        return self._samples

    def encoded(self, index: int) -> tuple[bytes, int]:
        """The image file's bytes and the class index of sample ``index``."""
        sample = self.samples()[index]
        return sample.image, self._label(sample.label)

    def _label(self, label: int) -> int:
        return label if self.label_map is None else self.label_map[label]

    def __getitem__(self, index: int) -> tuple[Any, int]:
        sample = self.samples()[index]
        return decode_image(sample.image, self.channels, sample.name), self._label(sample.label)


# --- streaming an epoch --------------------------------------------------------------------------


def shard_order(shards: int, seed: int, epoch: int) -> np.ndarray:
    """The order in which ``epoch`` reads the shards: a permutation drawn from (seed, epoch)."""
    return np.random.default_rng([seed, epoch]).permutation(shards)


def process_share(counts: Sequence[int], seed: int, epoch: int, rank: int, world_size: int, batch: int) -> np.ndarray:
    """This process's samples of ``epoch`` as sample numbers (the shards' samples numbered end to end), in training
    order: a whole number of ``batch``-sized batches, as many for every process (see the module's docstring)."""
    offsets = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])
    order = shard_order(len(counts), seed, epoch)
    stream = np.concatenate([np.arange(offsets[s], offsets[s + 1]) for s in order] or [np.zeros(0, np.int64)])
    length = len(stream) // (world_size * batch) * batch
    share = stream[rank * length : (rank + 1) * length].copy()
    rng = np.random.default_rng([seed, epoch, rank, world_size])
    for start in range(0, length, SHUFFLE_BLOCK):
        block = share[start : start + SHUFFLE_BLOCK]
        share[start : start + SHUFFLE_BLOCK] = block[rng.permutation(len(block))]
    return share


class ShardStream(IterableDataset):
    """One process's training batches of an epoch, streamed from the shards: ``prepare(sample_number, sample,
    epoch)`` makes each sample's item (decoded and augmented, or bytes for the device to decode) and ``collate``
    a batch of them. DataLoader worker w of W makes batches w, w + W, ... and reads only their samples, so the
    batches come out in the same order for any number of workers."""

    def __init__(
        self, shards: ShardSet, seed: int, rank: int, world_size: int, batch: int,
        prepare: Callable[[int, Sample, int], Any], collate: Callable[[list[Any]], Any],
    ) -> None:  # fmt: skip
        self.shards, self.seed, self.rank, self.world_size, self.batch = shards, seed, rank, world_size, batch
        self.prepare, self.collate = prepare, collate
        self.batches = shards.total // (world_size * batch)
        self.epoch, self.first = 0, 0
        dropped = shards.total - self.batches * world_size * batch
        if dropped:
            logger.info(
                "shards: %d of %d training samples per epoch left out (which ones changes every epoch), so that each "
                "of %d process(es) gets %d whole batches of %d", dropped, shards.total, world_size, self.batches, batch,
            )  # fmt: skip

    def set_epoch(self, epoch: int, first: int = 0) -> None:
        """The epoch to stream next, from its batch ``first`` on (after a resume)."""
        self.epoch, self.first = epoch, first

    def __iter__(self) -> Iterator[Any]:
        worker = get_worker_info()
        worker_id, workers = (worker.id, worker.num_workers) if worker is not None else (0, 1)
        share = process_share(self.shards.counts, self.seed, self.epoch, self.rank, self.world_size, self.batch)
        mine = list(range(self.first + worker_id, self.batches, workers))
        # sample number -> its position in the share, and the wanted samples of each shard (index in the shard)
        position = {int(share[p]): p for i in mine for p in range(i * self.batch, (i + 1) * self.batch)}
        offsets = np.concatenate([[0], np.cumsum(self.shards.counts, dtype=np.int64)]).tolist()
        numbers = np.fromiter(position, dtype=np.int64, count=len(position))
        wanted: dict[int, set[int]] = {}
        for number, shard in zip(numbers.tolist(), (np.searchsorted(offsets, numbers, side="right") - 1).tolist()):
            wanted.setdefault(shard, set()).add(number - offsets[shard])
        missing = {i: self.batch for i in mine}  # samples each batch still waits for
        ready: dict[int, Any] = {}
        pending = iter(mine)
        current = next(pending, None)
        for shard in (int(s) for s in shard_order(len(self.shards.counts), self.seed, self.epoch) if s in wanted):
            base = offsets[shard]
            for index, sample in read_samples(self.shards.urls[shard], wanted[shard]):
                at = position[base + index]
                ready[at] = self.prepare(base + index, sample, self.epoch)
                missing[at // self.batch] -= 1
                while current is not None and missing[current] == 0:
                    yield self.collate([ready.pop(p) for p in range(current * self.batch, (current + 1) * self.batch)])
                    current = next(pending, None)
        if current is not None:
            raise ValueError(
                f"the shards {self.shards.urls[:3]}... ended before batch {current} of epoch {self.epoch + 1}: they "
                f"hold fewer samples than their {SHARDS_INFO} says"
            )


def training_stream(data: DataBundle, rank: int, world_size: int, batch: int, encoded_only: bool) -> ShardStream:
    """The stream of ``data``'s training shards for one process: samples decoded and augmented as the training set's
    per-sample transform does (seeded by (seed, epoch, sample number)), or, with ``encoded_only``, their bytes."""
    train, shards = data.train, data.stream
    if shards is None:
        raise ValueError(f"training_stream needs data streamed from shards, got the {data.source!r} data source")
    if encoded_only:
        return ShardStream(shards, train.seed, rank, world_size, batch, _encoded_item, collate_encoded)
    prepare = partial(_transformed_item, train.transform, data.in_channels, train.seed)
    return ShardStream(shards, train.seed, rank, world_size, batch, prepare, default_collate)


def _encoded_item(number: int, sample: Sample, epoch: int) -> tuple[torch.Tensor, int]:
    return encoded(sample.image), sample.label


def _transformed_item(
    transform: Callable[[Any], torch.Tensor], channels: int, seed: int, number: int, sample: Sample, epoch: int
) -> tuple[torch.Tensor, int]:
    image = decode_image(sample.image, channels, sample.name)
    return seeded_transform(transform, image, sample_seed(seed, epoch, number)), sample.label
