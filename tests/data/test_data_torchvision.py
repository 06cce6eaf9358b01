"""build_data on torchvision's data sets, read by torchvision itself from files laid out as it expects."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from vitkit.data import build_data, default_augment


def _check(bundle, n_train: int, n_test: int, channels: int, size: int, num_classes: int) -> None:
    assert (len(bundle.train), len(bundle.val), bundle.val_name) == (n_train, n_test, "test")
    assert (bundle.in_channels, bundle.image_size, bundle.num_classes) == (channels, (size, size), num_classes)
    assert len(bundle.mean) == len(bundle.std) == channels
    image, label = bundle.train[0]
    assert image.shape == (channels, size, size) and image.dtype == torch.float32
    assert bundle.val[0][0].shape == (channels, size, size)
    # Labels come through as written by the fixtures: i % num_classes.
    assert [bundle.val[i][1] for i in range(n_test)] == [i % num_classes for i in range(n_test)]
    assert label == 0


@pytest.mark.parametrize(("source", "folder"), [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")])
def test_mnist_like(fake_mnist, source: str, folder: str) -> None:
    root = fake_mnist(folder)
    bundle = build_data(source, data_dir=root)
    _check(bundle, 30, 20, 1, 28, 10)
    assert bundle.augment == default_augment(source)
    if source == "mnist":
        assert bundle.class_names[7] == "7 - seven"
    else:
        assert bundle.class_names[-1] == "Ankle boot"
    # The statistics are the training images' own (uniform random bytes: mean 0.5, std 0.29).
    assert bundle.mean[0] == pytest.approx(0.5, abs=0.01) and bundle.std[0] == pytest.approx(0.289, abs=0.01)
    resized = build_data(source, data_dir=root, image_size=16, channels=3)
    assert resized.train[3][0].shape == (3, 16, 16) and resized.in_channels == 3


@pytest.mark.parametrize("num_classes", [10, 100])
def test_cifar(fake_cifar, num_classes: int) -> None:
    root = fake_cifar(num_classes)
    bundle = build_data(f"cifar{num_classes}", data_dir=root)
    n_train = 100 if num_classes == 10 else 20  # CIFAR-10 has five training batches, CIFAR-100 one file
    _check(bundle, n_train, 20, 3, 32, num_classes)
    assert bundle.class_names[:2] == ["class_0", "class_1"]
    assert bundle.augment.auto_augment == "trivialaugment"
    assert build_data(f"cifar{num_classes}", data_dir=root, channels=1).train[0][0].shape == (1, 32, 32)


def test_svhn(fake_svhn) -> None:
    bundle = build_data("svhn", data_dir=fake_svhn)
    _check(bundle, 20, 20, 3, 32, 10)
    assert bundle.class_names == [str(i) for i in range(10)]
    assert Counter(bundle.train[i][1] for i in range(20)) == {i: 2 for i in range(10)}  # label 10 read as digit 0


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("mnist", "MNIST/raw"),
        ("fashion-mnist", "FashionMNIST/raw"),
        ("cifar10", "cifar-10-batches-py"),
        ("cifar100", "cifar-100-python"),
        ("svhn", "train_32x32.mat"),
    ],
)
def test_missing_data_set_says_where_and_how(tmp_path, source: str, expected: str) -> None:
    expected_message = f"{source} not found or corrupted under {tmp_path} .*{expected}.*download=True"
    with pytest.raises(FileNotFoundError, match=expected_message):
        build_data(source, data_dir=tmp_path)
