"""WebDataset shards: what `vitkit shard` writes (checked with webdataset's own reader), how an epoch is dealt out
between processes, and the stream that training reads."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from torch.utils.data import DataLoader

from vitkit.data import load_image
from vitkit.data.shards import (
    ShardSamples,
    ShardStream,
    process_share,
    read_shard_info,
    write_shards,
)

CLASSES = {"cat": 7, "dog": 5, "eel": 4}  # 16 training images, not a multiple of the shard size


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """train/ of JPEGs and PNGs of varying sizes, val/ of two classes."""
    root = tmp_path_factory.mktemp("folder")

    def write(path: Path, size: tuple[int, int], seed: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(pixels, "RGB").save(path)

    for c, (name, count) in enumerate(CLASSES.items()):
        for i in range(count):
            write(root / "train" / name / f"{i}{'.jpg' if i % 2 else '.png'}", (10 + i, 12 + c), seed=10 * c + i)
        write(root / "val" / name / "0.jpg", (9, 9), seed=100 + c)
    return root


@pytest.fixture(scope="module")
def shards(folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("shards")
    write_shards(folder, out, shard_size=6)
    return out


def folder_samples(root: Path) -> Counter:
    """(file bytes, class index) of every image under root/<class>/, classes numbered in sorted order."""
    names = sorted(p.name for p in root.iterdir())
    return Counter((f.read_bytes(), names.index(f.parent.name)) for f in root.glob("*/*"))


def test_webdatasets_reader_reads_the_files_as_stored_with_their_class(folder: Path, shards: Path) -> None:
    import webdataset

    for split in ("train", "val"):
        urls = sorted(str(p) for p in shards.glob(f"{split}-*.tar"))
        read = Counter()
        for sample in webdataset.WebDataset(urls, shardshuffle=False, empty_check=False):
            image = [key for key in ("jpg", "png") if key in sample]
            assert len(image) == 1 and {key for key in sample if not key.startswith("__")} == {image[0], "cls"}
            read[(sample[image[0]], int(sample["cls"]))] += 1
        assert read == folder_samples(folder / split)
    info = json.loads((shards / "shards.json").read_text())
    assert info["classes"] == sorted(CLASSES)
    assert info["splits"]["train"]["class_counts"] == CLASSES
    assert [s["samples"] for s in info["splits"]["train"]["shards"]] == [6, 6, 4]
    assert info["channels"] == 3


def test_without_val_the_folders_held_out_images_become_the_val_shards(folder: Path, tmp_path: Path) -> None:
    from vitkit.data import build_data

    only_train = tmp_path / "only"
    for f in (folder / "train").glob("*/*"):
        (only_train / "train" / f.parent.name).mkdir(parents=True, exist_ok=True)
        (only_train / "train" / f.parent.name / f.name).write_bytes(f.read_bytes())
    write_shards(only_train, tmp_path / "shards", shard_size=100, val_fraction=0.25, seed=3)
    held_out = build_data("folder", data_dir=only_train, val_fraction=0.25, seed=3, cache="off").val.base
    expected = Counter((Path(held_out.dataset.samples[i][0]).read_bytes(), held_out.dataset.samples[i][1])
                       for i in held_out.indices)  # fmt: skip
    info, _ = read_shard_info(tmp_path / "shards")
    val = ShardSamples(info.splits["val"], 3)
    assert Counter(val.encoded(i) for i in range(len(val))) == expected


def test_patterns_lists_and_bad_locations(shards: Path, tmp_path: Path) -> None:
    info, given = read_shard_info(f"{shards}/train-{{000000..000002}}.tar")
    assert given == info.splits["train"] and given.counts == (6, 6, 4)
    listing = tmp_path / "list.txt"
    listing.write_text(f"{shards}/train-000002.tar\n{shards}/train-000000.tar\n")
    assert read_shard_info(str(listing))[1].counts == (4, 6)
    with pytest.raises(FileNotFoundError, match="shards.json"):
        read_shard_info(f"{tmp_path}/train-000000.tar")
    with pytest.raises(ValueError, match="does not list the shard"):
        read_shard_info(f"{shards}/train-000009.tar")
    with pytest.raises(FileNotFoundError, match="has no train/ folder"):
        write_shards(shards, tmp_path / "out")


def test_shards_read_through_a_command_as_from_object_storage(shards: Path) -> None:
    """WebDataset's pipe: form (`pipe:aws s3 cp s3://... -` in real use): the counts come from shards.json read the
    same way, and the samples are those of the local shards."""
    info, given = read_shard_info(f"pipe:cat {shards}/train-{{000000..000002}}.tar")
    assert given.urls[0] == f"pipe:cat {shards}/train-000000.tar" and given.counts == (6, 6, 4)
    assert info.splits["val"].urls == (f"pipe:cat {shards}/val-000000.tar",)
    local = ShardSamples(read_shard_info(shards)[0].splits["train"], 3)
    piped = ShardSamples(given, 3)
    assert [piped.encoded(i) for i in range(16)] == [local.encoded(i) for i in range(16)]


def test_shard_samples_decode_as_the_files_do(folder: Path, shards: Path) -> None:
    info, _ = read_shard_info(shards)
    val = ShardSamples(info.splits["val"], 1, label_map=[2, 0, 1])
    by_bytes = {f.read_bytes(): f for f in (folder / "val").glob("*/*")}
    for i in range(len(val)):
        image, label = val[i]
        file = by_bytes[val.encoded(i)[0]]
        assert np.array_equal(np.asarray(image), np.asarray(load_image(file, 1)))
        assert label == [2, 0, 1][sorted(CLASSES).index(file.parent.name)]


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_each_process_gets_as_many_whole_batches_of_distinct_samples(world_size: int) -> None:
    counts, batch = (50, 37, 20), 4  # 107 samples
    shares = [process_share(counts, 7, 0, rank, world_size, batch) for rank in range(world_size)]
    per_process = 107 // (world_size * batch) * batch
    assert all(len(share) == per_process for share in shares)
    everything = np.concatenate(shares)
    assert len(set(everything.tolist())) == len(everything) and everything.max() < 107
    again = [process_share(counts, 7, 0, rank, world_size, batch) for rank in range(world_size)]
    assert all(np.array_equal(a, b) for a, b in zip(shares, again))  # a function of (seed, epoch)
    assert not np.array_equal(shares[0], process_share(counts, 7, 1, 0, world_size, batch))  # a new order per epoch


def test_the_stream_is_the_same_for_any_number_of_workers_and_after_a_resume(shards: Path) -> None:
    info, _ = read_shard_info(shards)

    def stream(rank: int = 0, world_size: int = 1) -> ShardStream:
        return ShardStream(info.splits["train"], 5, rank, world_size, 3, lambda n, s, e: (n, s.image), list)

    def batches(loader_stream: ShardStream, workers: int, epoch: int, first: int = 0) -> list:
        loader_stream.set_epoch(epoch, first)
        return list(DataLoader(loader_stream, batch_size=None, num_workers=workers))

    one = stream()
    assert one.batches == 5  # 16 samples: 5 batches of 3, one sample left out
    epoch = batches(one, 0, epoch=1)
    numbers = [n for batch in epoch for n, _ in batch]
    assert numbers == process_share((6, 6, 4), 5, 1, 0, 1, 3).tolist()
    ordered = sorted((n, image) for batch in epoch for n, image in batch)  # sample number -> its bytes, in order
    reader = ShardSamples(info.splits["train"], 3)
    assert [image for _, image in ordered] == [reader.encoded(n)[0] for n, _ in ordered]
    assert batches(one, 2, epoch=1) == epoch
    assert batches(one, 2, epoch=1, first=3) == epoch[3:]
    halves = [batches(stream(rank, 2), 0, epoch=1) for rank in (0, 1)]
    assert len(halves[0]) == len(halves[1]) == 2  # 16 samples, 2 processes: 2 batches of 3 each, 4 left out
    assert not {n for b in halves[0] for n, _ in b} & {n for b in halves[1] for n, _ in b}
