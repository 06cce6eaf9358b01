"""Small data sets the data tests write themselves: image files of every mode, image folders, and torchvision's
on-disk layouts of MNIST, Fashion-MNIST, CIFAR-10/100 and SVHN."""

from __future__ import annotations

import hashlib
import pickle
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from torchvision import datasets


def make_image(path: Path, mode: str = "RGB", size: tuple[int, int] = (12, 10), seed: int = 0) -> Path:
    """Write a random image of `mode` and (width, height) `size` to `path` (the suffix picks the format)."""
    rng = np.random.default_rng(seed)
    width, height = size
    if mode in ("RGB", "CMYK", "RGBA"):
        pixels = rng.integers(0, 256, (height, width, len(mode)), dtype=np.uint8)
        image = Image.fromarray(pixels[..., :3], "RGB") if mode == "RGB" else Image.fromarray(pixels, mode)
    elif mode == "LA":
        image = Image.fromarray(rng.integers(0, 256, (height, width, 2), dtype=np.uint8), "LA")
    elif mode == "I;16":
        image = Image.fromarray(rng.integers(0, 65536, (height, width), dtype=np.uint16))
    elif mode == "P":
        image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB").quantize(16)
    else:  # "L", "1"
        image = Image.fromarray(rng.integers(0, 256, (height, width), dtype=np.uint8), "L").convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


@pytest.fixture
def image_file() -> Callable[..., Path]:
    """make_image as a fixture: image_file(path, mode="RGB", size=(width, height), seed=0) -> path."""
    return make_image


@pytest.fixture
def image_folder(tmp_path: Path) -> Callable[..., Path]:
    """make(root, {class: count}, modes=("RGB",), size=(12, 10)) writes root/<class>/<i>.png cycling through modes."""

    def make(
        root: Path, counts: dict[str, int], modes: tuple[str, ...] = ("RGB",), size: tuple[int, int] = (12, 10)
    ) -> Path:
        for c, (name, count) in enumerate(counts.items()):
            for i in range(count):
                make_image(root / name / f"{i}.png", modes[i % len(modes)], size, seed=100 * c + i)
        return root

    return make


def _idx(array: np.ndarray) -> bytes:
    """The big-endian IDX format of MNIST's files: magic (0, 0, type 0x08 = uint8, ndim), dims, data."""
    return struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _labelled_images(n: int, shape: tuple[int, ...], num_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, *shape), dtype=np.uint8), np.arange(n) % num_classes


@pytest.fixture
def fake_mnist(tmp_path: Path) -> Callable[[str], Path]:
    """make("MNIST" | "FashionMNIST") writes the four uncompressed raw IDX files torchvision reads; returns root."""

    def make(name: str, n_train: int = 30, n_test: int = 20) -> Path:
        raw = tmp_path / name / "raw"
        raw.mkdir(parents=True)
        for prefix, n, seed in (("train", n_train, 1), ("t10k", n_test, 2)):
            images, labels = _labelled_images(n, (28, 28), 10, seed)
            (raw / f"{prefix}-images-idx3-ubyte").write_bytes(_idx(images))
            (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(_idx(labels.astype(np.uint8)))
        return tmp_path

    return make


@pytest.fixture
def fake_cifar(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[int], Path]:
    """make(10 | 100) writes the pickled batches and meta file torchvision reads, and points torchvision's checksums
    at them (the real ones belong to the real files)."""

    def write(path: Path, obj: dict) -> list:
        path.write_bytes(pickle.dumps(obj))
        return [path.name, _md5(path)]

    def make(num_classes: int, n_per_file: int = 20) -> Path:
        cls = datasets.CIFAR10 if num_classes == 10 else datasets.CIFAR100
        folder = tmp_path / cls.base_folder
        folder.mkdir()
        label_key = "labels" if num_classes == 10 else "fine_labels"
        lists = {}
        for attr in ("train_list", "test_list"):
            lists[attr] = []
            for seed, (name, _) in enumerate(getattr(cls, attr)):
                images, labels = _labelled_images(n_per_file, (3 * 32 * 32,), num_classes, seed)
                lists[attr].append(write(folder / name, {"data": images, label_key: labels.tolist()}))
            monkeypatch.setattr(cls, attr, lists[attr])
        names = [f"class_{i}" for i in range(num_classes)]
        _, meta_md5 = write(folder / cls.meta["filename"], {cls.meta["key"]: names})
        monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": meta_md5})
        return tmp_path

    return make


@pytest.fixture
def fake_svhn(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """train_32x32.mat / test_32x32.mat as SVHN ships them: X (32, 32, 3, N), y (N, 1) with label 10 for digit 0."""
    from scipy.io import savemat

    split_list = {}
    for split, (url, filename, _) in datasets.SVHN.split_list.items():
        images, labels = _labelled_images(20, (32, 32, 3), 10, seed=len(split))
        savemat(tmp_path / filename, {"X": np.moveaxis(images, 0, -1), "y": np.where(labels == 0, 10, labels)[:, None]})
        split_list[split] = [url, filename, _md5(tmp_path / filename)]
    monkeypatch.setattr(datasets.SVHN, "split_list", split_list)
    return tmp_path
