"""The checked-file index: unchanged files are not checked again, changed ones are, bad ones stay reported, the
index lives in the cache (never in the data folder) and a cache that cannot be written costs only the next check."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vitkit.data import build_data, compute_mean_std, image_header
from vitkit.data.folder_index import CACHE_ENV, FolderIndex, cache_dir
from vitkit.data.sources import folder_mean_std


class CountingChecker:
    """image_header, counting the files it opens (in this process: the checks run with workers=0)."""

    def __init__(self) -> None:
        self.opened: list[str] = []

    def __call__(self, path: str) -> tuple[int, tuple[int, int]]:
        self.opened.append(path)
        return image_header(path)


def write_images(folder: Path, count: int, size: tuple[int, int] = (9, 7)) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(count)
    paths = []
    for i in range(count):
        path = folder / f"{i:04d}.png"
        Image.fromarray(rng.integers(0, 256, (size[1] + i % 3, size[0], 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


def test_unchanged_files_are_not_checked_again_and_changed_ones_are(tmp_path: Path) -> None:
    paths = write_images(tmp_path / "data", 6)
    (tmp_path / "data" / "bad.png").write_text("not an image")
    paths.append(str(tmp_path / "data" / "bad.png"))
    checker = CountingChecker()
    headers, bad = FolderIndex(tmp_path / "data").check(paths, checker=checker)
    assert checker.opened == paths
    assert headers[:-1] == [(3, Image.open(path).size[::-1]) for path in paths[:-1]]  # PIL's own (width, height)
    reason = "not an image in any format Pillow reads (wrong extension, or not an image at all)"
    assert headers[-1] is None and bad == [f"{paths[-1]}: {reason}"]

    again = CountingChecker()
    index = FolderIndex(tmp_path / "data")  # read back from the cache
    assert index.check(paths, checker=again) == (headers, bad) and again.opened == [] and index.checked == 0

    Image.new("L", (5, 4)).save(paths[2])  # rewritten: another size (and time)
    changed = CountingChecker()
    headers, bad = FolderIndex(tmp_path / "data").check(paths, checker=changed)
    assert changed.opened == [paths[2]] and headers[2] == (1, (4, 5)) and len(bad) == 1


def test_parallel_check_matches_one_process_and_the_index_stays_out_of_the_data_folder(tmp_path: Path) -> None:
    data = tmp_path / "data"
    paths = write_images(data / "train" / "a", 150) + write_images(data / "train" / "b", 150)
    before = sorted(p.name for p in data.rglob("*"))
    folders = [data, data / "train", data / "train" / "a", data / "train" / "b"]
    for folder in folders:
        folder.chmod(0o555)  # read-only (for a user other than root)
    try:
        in_process = FolderIndex(data, tmp_path / "one").check(paths, workers=0)
        parallel = FolderIndex(data, tmp_path / "two").check(paths, workers=2)
    finally:
        for folder in folders:
            folder.chmod(0o755)
    assert parallel == in_process
    assert sorted(p.name for p in data.rglob("*")) == before, "nothing written into the data folder"
    assert os.environ[CACHE_ENV] and cache_dir() == Path(os.environ[CACHE_ENV])
    assert list((tmp_path / "two" / "folder-index").glob("*.json"))


def test_statistics_are_kept_with_the_index_and_an_unwritable_cache_only_warns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    write_images(tmp_path / "data" / "train" / "a", 4)
    write_images(tmp_path / "data" / "train" / "b", 4)
    caplog.set_level(logging.INFO)
    first = build_data("folder", data_dir=tmp_path / "data", image_size=8, val_fraction=0.25, cache="off")
    assert "from its index" not in caplog.text
    second = build_data("folder", data_dir=tmp_path / "data", image_size=8, val_fraction=0.25, cache="off")
    assert "normalisation statistics of" in caplog.text and (second.mean, second.std) == (first.mean, first.std)
    assert second.train.base.indices == first.train.base.indices, "the held-out split, read from the index"

    blocker = tmp_path / "a-file"
    blocker.write_text("a file where the cache folder would go: no folder can be made under it")
    monkeypatch.setenv(CACHE_ENV, str(blocker / "cache"))
    caplog.clear()
    third = build_data("folder", data_dir=tmp_path / "data", image_size=8, val_fraction=0.25, cache="off")
    assert (third.mean, third.std) == (first.mean, first.std) and "cannot write the folder index" in caplog.text
    in_workers = folder_mean_std(first.train.base, (8, 8), 3, workers=1)  # in a worker process, as with --workers
    assert np.allclose(in_workers, (first.mean, first.std), atol=1e-12)
    # Files are decoded as evaluation decodes them; the transforms.v2 resize of the whole image agrees closely.
    assert np.allclose(compute_mean_std(first.train.base, 8, 3), (first.mean, first.std), atol=5e-3)
