"""build_data on the embedded digits and on image folders, build_folder_eval_data, and their errors."""

from __future__ import annotations

import pickle
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from vitkit.data import (
    AugmentConfig,
    ImageLoadError,
    SeededTransformDataset,
    build_data,
    build_folder_eval_data,
    default_augment,
)
from vitkit.data.sources import stratified_split
from vitkit.model import ViTConfig


def _labels(dataset) -> list[int]:
    return [dataset[i][1] for i in range(len(dataset))]


def _unnormalised(bundle, image: torch.Tensor) -> torch.Tensor:
    mean, std = torch.tensor(bundle.mean)[:, None, None], torch.tensor(bundle.std)[:, None, None]
    return image * std + mean


@pytest.fixture(scope="module")
def digits():
    return build_data("digits", seed=0)


def test_digits_bundle(digits) -> None:
    assert (len(digits.train), len(digits.val)) == (1437, 360)
    assert digits.class_names == [str(i) for i in range(10)] and digits.num_classes == 10
    assert (digits.in_channels, digits.image_size, digits.source, digits.val_name) == (1, (8, 8), "digits", "test")
    assert isinstance(digits.train, SeededTransformDataset)
    assert digits.augment == default_augment("digits")
    image, label = digits.train[0]
    assert image.shape == (1, 8, 8) and image.dtype == torch.float32 and isinstance(label, int)


def test_digits_split_is_stratified_and_seeded(digits) -> None:
    val_counts = Counter(_labels(digits.val))
    train_counts = Counter(_labels(digits.train))
    all_counts = Counter(load_digits().target.tolist())
    for digit, count in all_counts.items():
        assert abs(val_counts[digit] - 0.2 * count) <= 1  # stratified: 20% of every class
        assert train_counts[digit] + val_counts[digit] == count
    val_pixels = torch.stack([digits.val[i][0] for i in range(len(digits.val))])
    again = build_data("digits", seed=0)
    assert torch.equal(val_pixels, torch.stack([again.val[i][0] for i in range(len(again.val))]))
    other = build_data("digits", seed=1)
    assert not torch.equal(val_pixels, torch.stack([other.val[i][0] for i in range(len(other.val))]))


def test_digits_pixels_and_statistics(digits) -> None:
    raw = load_digits()
    every = {tuple(np.rint(img * 255 / 16).astype(np.uint8).ravel()) for img in raw.images}
    first = _unnormalised(digits, digits.val[0][0])
    as_uint8 = tuple(torch.round(first * 255).to(torch.uint8).ravel().tolist())
    assert as_uint8 in every  # the eval image is a real digit, scaled from 0..16 to 0..255
    train = torch.stack([digits.train.base[i][0].float() / 255 for i in range(len(digits.train))])
    assert digits.mean == pytest.approx([train.mean().item()], abs=1e-4)
    assert digits.std == pytest.approx([train.std(unbiased=False).item()], abs=1e-4)


def test_digits_options() -> None:
    bundle = build_data("digits", image_size=16, channels=3, aug=AugmentConfig(hflip=1.0))
    assert bundle.train[0][0].shape == (3, 16, 16) and bundle.val[0][0].shape == (3, 16, 16)
    assert bundle.in_channels == 3 and len(bundle.mean) == 3 and bundle.augment.hflip == 1.0
    default = build_data("digits")
    samples = [default.train[i] for i in range(len(default.train))]
    assert {tuple(image.shape) for image, _ in samples} == {(1, 8, 8)}
    assert sorted({int(label) for _, label in samples}) == list(range(10))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"source": "imagenet"}, ValueError, "unknown data source 'imagenet'; expected one of"),
        ({"source": "digits", "image_size": 0}, ValueError, "image_size must be a positive int.*got 0"),
        ({"source": "digits", "image_size": (8, -1)}, ValueError, r"got \(8, -1\)"),
        ({"source": "digits", "channels": 2}, ValueError, "channels must be 1, 3 or None.*got 2"),
        ({"source": "digits", "data_dir": "x"}, ValueError, "embedded and takes no data_dir"),
        ({"source": "folder"}, ValueError, "'folder' needs data_dir"),
        ({"source": "mnist"}, ValueError, "'mnist' needs data_dir"),
        ({"source": "folder", "data_dir": "/no/such/dir"}, FileNotFoundError, "/no/such/dir does not exist; expected"),
    ],
)
def test_build_data_argument_errors(kwargs: dict, error: type, match: str) -> None:
    source = kwargs.pop("source")
    with pytest.raises(error, match=match):
        build_data(source, **kwargs)


# ---------------------------------------------------------------------------------------------------- folders


def test_folder_with_val(tmp_path: Path, image_folder) -> None:
    image_folder(tmp_path / "train", {"cat": 4, "dog": 5, "emu": 3}, size=(20, 14))
    image_folder(tmp_path / "val", {"dog": 2, "emu": 1})  # no cat: labels must still follow train's classes
    bundle = build_data("folder", data_dir=tmp_path, seed=0)
    assert bundle.class_names == ["cat", "dog", "emu"]
    assert (len(bundle.train), len(bundle.val), bundle.val_name) == (12, 3, "val")
    assert _labels(bundle.val) == [1, 1, 2]
    assert Counter(_labels(bundle.train)) == {0: 4, 1: 5, 2: 3}
    assert (bundle.in_channels, bundle.image_size) == (3, (14, 14))  # RGB; median shorter side
    assert bundle.augment == default_augment("folder")
    assert bundle.train[0][0].shape == (3, 14, 14) and bundle.val[0][0].shape == (3, 14, 14)


def test_folder_datasets_pickle_for_spawned_workers(tmp_path: Path, image_folder) -> None:
    image_folder(tmp_path / "train", {"a": 3, "b": 3})
    bundle = build_data("folder", data_dir=tmp_path, val_fraction=0.5, seed=3)
    bundle.train.set_epoch(2)
    for dataset in (bundle.train, bundle.val):
        copy = pickle.loads(pickle.dumps(dataset))
        assert all(torch.equal(copy[i][0], dataset[i][0]) for i in range(len(dataset)))


def test_folder_split_is_stratified_and_seeded(tmp_path: Path, image_folder) -> None:
    image_folder(tmp_path / "train", {"a": 10, "b": 20}, modes=("L",), size=(8, 8))
    bundle = build_data("folder", data_dir=tmp_path, val_fraction=0.2, seed=5, cache="off")
    assert (len(bundle.train), len(bundle.val)) == (24, 6)
    assert Counter(_labels(bundle.val)) == {0: 2, 1: 4}
    assert bundle.in_channels == 1 and bundle.image_size == (8, 8)
    val_paths = [bundle.val.base.dataset.samples[i][0] for i in bundle.val.base.indices]
    again = build_data("folder", data_dir=tmp_path, val_fraction=0.2, seed=5, cache="off")
    assert val_paths == [again.val.base.dataset.samples[i][0] for i in again.val.base.indices]
    other = build_data("folder", data_dir=tmp_path, val_fraction=0.2, seed=6, cache="off")
    assert val_paths != [other.val.base.dataset.samples[i][0] for i in other.val.base.indices]
    assert set(val_paths).isdisjoint(bundle.train.base.dataset.samples[i][0] for i in bundle.train.base.indices)


def test_stratified_split_holds_out_the_rounded_fraction_of_each_class() -> None:
    targets = [0] * 3 + [1] * 7 + [2] * 2  # a quarter of each: 0.75 -> 1, 1.75 -> 2, 0.5 -> 1 (at least one, never all)
    train, held_out = stratified_split(targets, 0.25, seed=1)
    assert sorted(train + held_out) == list(range(12))
    assert Counter(targets[i] for i in held_out) == {0: 1, 1: 2, 2: 1}
    assert (train, held_out) == stratified_split(targets, 0.25, seed=1)
    draws = {tuple(stratified_split(targets, 0.25, seed)[1]) for seed in range(20)}
    assert len(draws) > 10  # the seed chooses the images
    assert any(list(held) != sorted(held) for held in draws)  # shuffled: the first N held-out images mix classes
    assert Counter(targets[i] for i in stratified_split(targets, 0.9, seed=1)[1]) == {0: 2, 1: 6, 2: 1}
    with pytest.raises(ValueError, match=r"classes \['cat'\] have fewer than 2 images"):
        stratified_split([0, 0, 1], 0.5, seed=0, classes=["dog", "cat"])


def test_mixed_mode_folder_is_rgb_everywhere(tmp_path: Path, image_folder, image_file) -> None:
    image_folder(tmp_path / "train", {"a": 6, "b": 6}, modes=("L", "RGBA", "P", "I;16", "1", "LA"), size=(10, 10))
    image_file(tmp_path / "train" / "a" / "cmyk.jpg", "CMYK", size=(10, 10))
    image_file(tmp_path / "train" / "b" / "grey.jpg", "L", size=(10, 10))
    bundle = build_data("folder", data_dir=tmp_path, val_fraction=0.5)
    assert bundle.in_channels == 3 and len(bundle.mean) == 3
    shapes = {bundle.train[i][0].shape for i in range(len(bundle.train))}
    shapes |= {bundle.val[i][0].shape for i in range(len(bundle.val))}
    assert shapes == {(3, 10, 10)}


def test_grey_folder_is_one_channel_unless_asked(tmp_path: Path, image_folder) -> None:
    image_folder(tmp_path / "train", {"a": 4, "b": 4}, modes=("L", "I;16", "1", "LA"), size=(9, 9))
    image_folder(tmp_path / "val", {"a": 1, "b": 1}, modes=("RGB",), size=(30, 20))
    bundle = build_data("folder", data_dir=tmp_path, image_size=6)
    assert bundle.in_channels == 1
    assert {bundle.train[i][0].shape for i in range(8)} | {bundle.val[i][0].shape for i in range(2)} == {(1, 6, 6)}
    as_rgb = build_data("folder", data_dir=tmp_path, image_size=6, channels=3)
    assert as_rgb.in_channels == 3 and as_rgb.train[0][0].shape == (3, 6, 6)


def test_folder_ignores_hidden_and_non_image_files(tmp_path: Path, image_folder) -> None:
    image_folder(tmp_path / "train", {"a": 3, "b": 3})
    (tmp_path / "train" / "a" / "notes.txt").write_text("not an image")
    (tmp_path / "train" / "a" / "._0.png").write_bytes(b"\x00\x05macOS fork")
    image_folder(tmp_path / "train" / ".ipynb_checkpoints", {"x": 1})
    bundle = build_data("folder", data_dir=tmp_path, val_fraction=0.5)
    assert bundle.class_names == ["a", "b"] and len(bundle.train) + len(bundle.val) == 6


def test_corrupt_image_is_substituted_deterministically_then_named_at_the_next_start(
    tmp_path: Path, image_folder, caplog
) -> None:
    image_folder(tmp_path / "train", {"a": 4, "b": 4}, size=(32, 32))
    image_folder(tmp_path / "val", {"a": 1, "b": 1})
    bundle = build_data("folder", data_dir=tmp_path, image_size=8, cache="off")
    broken = tmp_path / "train" / "a" / "0.png"
    assert bundle.train.base.samples[0][0] == str(broken)
    broken.write_bytes(broken.read_bytes()[:-60])  # truncated: the header still reads, the pixels do not
    # Mid-run: the next sample that decodes, with sample 0's random draws, the same each time; logged and counted.
    image, label = bundle.train[0]
    assert label == bundle.train[1][1] and torch.equal(image, bundle.train[0][0])
    with torch.random.fork_rng():
        torch.manual_seed(bundle.train.sample_seed(0))
        assert torch.equal(image, bundle.train.transform(bundle.train.base[1][0]))
    assert f"cannot read {broken} as an image: truncated" in caplog.text and "substituting" in caplog.text
    assert bundle.train.substitutions == 2
    # The next start sees the file changed (size, time), checks it again and finds the missing end.
    for cache in ("on", "off"):
        with pytest.raises(ImageLoadError, match=f"1 bad file.*\n  {broken}: truncated"):
            build_data("folder", data_dir=tmp_path, image_size=8, channels=3, cache=cache)
    # Scanning the folder (channels and size unknown) reads headers: a file that is no image at all fails there.
    broken.write_text("not an image")
    with pytest.raises(ImageLoadError, match=str(broken)):
        build_data("folder", data_dir=tmp_path)


def test_folder_layout_errors(tmp_path: Path, image_folder) -> None:
    image_folder(tmp_path / "flat", {"a": 2, "b": 2})
    with pytest.raises(FileNotFoundError, match=r"has no train/ folder \(found \['a', 'b'\]\); expected DIR/train"):
        build_data("folder", data_dir=tmp_path / "flat")
    (tmp_path / "noclass" / "train").mkdir(parents=True)
    (tmp_path / "noclass" / "train" / "x.png").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="no class sub-folders in .*noclass/train; expected"):
        build_data("folder", data_dir=tmp_path / "noclass")
    image_folder(tmp_path / "empty" / "train", {"a": 2})
    (tmp_path / "empty" / "train" / "b").mkdir()
    with pytest.raises(ValueError, match="empty/train/b: class folder holds no image files"):
        build_data("folder", data_dir=tmp_path / "empty")
    image_folder(tmp_path / "extra" / "train", {"a": 2, "b": 2})
    image_folder(tmp_path / "extra" / "val", {"a": 1, "c": 1})
    with pytest.raises(ValueError, match=r"class folders \['c'\] that are not among the classes \['a', 'b'\]"):
        build_data("folder", data_dir=tmp_path / "extra")


def test_folder_split_errors(tmp_path: Path, image_folder) -> None:
    image_folder(tmp_path / "train", {"a": 5, "b": 1})
    with pytest.raises(ValueError, match="val_fraction must be in \\(0, 1\\).*got 0.0"):
        build_data("folder", data_dir=tmp_path, val_fraction=0.0)
    with pytest.raises(ValueError, match="cannot split .*6 images, 2 classes.*at least 2 images"):
        build_data("folder", data_dir=tmp_path, val_fraction=0.5)


# ------------------------------------------------------------------------------------------ evaluation folders


def _eval_config(image_size, channels: int, class_names: list[str]) -> ViTConfig:
    stats = [0.5] * channels
    return ViTConfig(
        image_size=image_size, patch_size=2, in_channels=channels, num_classes=len(class_names),
        class_names=class_names or None, mean=stats, std=stats,
    )  # fmt: skip


def test_folder_eval_data(tmp_path: Path, image_folder) -> None:
    image_folder(tmp_path / "eval", {"b": 2, "c": 1}, modes=("RGBA", "L"), size=(16, 12))
    data = build_folder_eval_data(tmp_path / "eval", _eval_config(8, 1, ["a", "b", "c"]))
    assert _labels(data) == [1, 1, 2]
    assert {data[i][0].shape for i in range(3)} == {(1, 8, 8)}
    # A training folder works too: its val/ part is used.
    image_folder(tmp_path / "run" / "train", {"a": 1, "b": 1})
    image_folder(tmp_path / "run" / "val", {"a": 2})
    assert _labels(build_folder_eval_data(tmp_path / "run", _eval_config((8, 6), 3, ["a", "b"]))) == [0, 0]


def test_folder_eval_data_errors(tmp_path: Path, image_folder) -> None:
    with pytest.raises(FileNotFoundError, match="evaluation folder .*missing does not exist"):
        build_folder_eval_data(tmp_path / "missing", _eval_config(8, 1, ["a"]))
    image_folder(tmp_path / "eval", {"a": 1, "zebra": 1})
    with pytest.raises(ValueError, match=r"class folders \['zebra'\] that are not among the classes \['a', 'b'\]"):
        build_folder_eval_data(tmp_path / "eval", _eval_config(8, 1, ["a", "b"]))
    with pytest.raises(ValueError, match="num_classes is 0"):
        build_folder_eval_data(tmp_path / "eval", _eval_config(8, 1, []))
    (tmp_path / "hollow" / "a").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="hollow holds no images"):
        build_folder_eval_data(tmp_path / "hollow", _eval_config(8, 1, ["a"]))
