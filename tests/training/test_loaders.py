"""Training from WebDataset shards: a resumed run equals an uninterrupted one, two processes on shards that do not
divide evenly between them finish, and the trained run evaluates and predicts on shards as on the folder."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from test_resume import Crash, assert_same_run, crash_at, resume
from training_helpers import STREAMED

from vitkit.cli import main
from vitkit.training import train
from vitkit.training.checkpoint import load_checkpoint
from vitkit.training.metrics import read_metrics


def test_a_run_on_shards_resumes_exactly_also_with_other_workers(digit_shards: tuple[Path, Path], tiny) -> None:
    shards = str(digit_shards[1])
    reference = train(tiny("reference", data_dir=shards, epochs=1, save_every=3, **STREAMED))
    assert reference.history[0]["step"] == 90 // 16  # every whole batch of the epoch, 10 samples left out
    crashed = tiny("crashed", data_dir=shards, epochs=1, save_every=3, **STREAMED)
    with pytest.raises(Crash):
        train(crashed, on_step_end=crash_at(4))
    _, state = load_checkpoint(Path(crashed.out))
    assert state["epoch"] == 0 and state["step_in_epoch"] == 3  # mid-epoch, one step after a checkpoint
    resumed = resume(Path(crashed.out), workers=2)  # two workers stream the rest of the epoch
    assert_same_run(reference.run_dir, resumed.run_dir)


@pytest.fixture(scope="module")
def two_process_run(ddp_out: Path) -> Path:
    """One epoch of 2 processes on the 3 uneven shards, run by the torchrun launch of conftest.py's `ddp_out`."""
    return ddp_out / "uneven"


def test_two_processes_on_uneven_shards_finish_the_epoch(two_process_run: Path) -> None:
    (record,) = read_metrics(two_process_run)
    assert record["step"] == 90 // 16  # 5 batches of 8 per process: 80 of the 90 samples
    assert (two_process_run / "model.safetensors").is_file()


def test_evaluate_and_predict_read_shards_as_the_folder(
    two_process_run: Path, digit_shards: tuple[Path, Path], capsys: pytest.CaptureFixture
) -> None:
    folder, shards = digit_shards

    def run_json(*argv: str) -> list[dict]:
        assert main(list(argv)) == 0
        return [json.loads(line) for line in capsys.readouterr().out.splitlines()]

    plot = str(two_process_run / "cm.png")
    (on_shards,) = run_json("evaluate", str(two_process_run), "--data-dir", str(shards), "--json", "--plot", plot)
    (on_folder,) = run_json("evaluate", str(two_process_run), "--data-dir", str(folder), "--json", "--plot", plot)
    (own_split,) = run_json("evaluate", str(two_process_run), "--json", "--plot", plot)  # the run's val shards
    assert on_shards["num_samples"] == on_folder["num_samples"] == own_split["num_samples"] == 21
    assert on_shards["confusion_matrix"] == on_folder["confusion_matrix"] == own_split["confusion_matrix"]

    def top1(lines: list[dict]) -> Counter:
        return Counter(line["top_k"][0]["class"] for line in lines)

    from_shards = run_json("predict", str(two_process_run), str(shards / "val-000000.tar"), "--top-k", "1")
    from_folder = run_json("predict", str(two_process_run), str(folder / "val"), "--top-k", "1")
    assert all(line["path"].startswith(str(shards / "val-000000.tar#")) for line in from_shards)
    assert len(from_shards) == 21 and top1(from_shards) == top1(from_folder)


@pytest.mark.parametrize("cache", ["on", "off"])
def test_every_process_gets_as_many_validation_batches_and_together_every_image_once(tiny, cache: str) -> None:
    """A sharded model gathers its weights in every forward pass, so every process must run as many of them; here
    360 held-out digits over 7 processes give shares of 52 and 51, two batches of 51 and one: the short shares get
    an empty batch in place of the missing one."""
    import torch

    from vitkit.training.distributed import DistContext
    from vitkit.training.loaders import Loaders
    from vitkit.training.run import build_run_data

    data = build_run_data(tiny(cache=cache))
    assert len(data.val) == 360
    labels_seen: list[int] = []
    counts = []
    for rank in range(7):
        loaders = Loaders(data, 63, 1, 0, 0, DistContext(rank=rank, world_size=7), torch.device("cpu"))
        loaders.val_batch = 51
        if not loaders.in_memory:
            loaders.val_loader = torch.utils.data.DataLoader(loaders.val_loader.dataset, batch_size=51)
        batches = list(loaders.val())
        counts.append(len(batches))
        for images, labels in batches:
            assert images.shape[1:] == (data.in_channels, *data.image_size) and len(images) == len(labels)
            labels_seen += labels.tolist()
    assert counts == [2] * 7
    assert Counter(labels_seen) == Counter(int(label) for _, label in data.val)


@pytest.mark.parametrize("cache", ["on", "off"])
def test_an_epoch_cut_short_by_a_step_limit_reads_only_the_batches_it_trains_on(tiny, cache: str) -> None:
    """Micro-batches first..end of an epoch are those of the whole epoch at the same places, and the sampler
    deals no index beyond them (so that no worker decodes an image `--steps` will not train on)."""
    import torch

    from vitkit.training.distributed import DistContext
    from vitkit.training.loaders import Loaders
    from vitkit.training.run import build_run_data

    loaders = Loaders(build_run_data(tiny(cache=cache)), 64, 1, 0, 0, DistContext(), torch.device("cpu"))
    whole = list(loaders.epoch(1))
    part = list(loaders.epoch(1, first=3, end=5))
    assert len(whole) == loaders.micro_batches and len(part) == 2
    for (images, labels), (expected_images, expected_labels) in zip(part, whole[3:5], strict=True):
        assert torch.equal(images, expected_images) and torch.equal(labels, expected_labels)
    assert len(loaders.sampler) == len(list(loaders.sampler)) == 2 * 64


def test_image_files_arrive_as_uint8_and_are_normalised_on_the_device_as_each_sample_decodes(tmp_path: Path) -> None:
    """The workers send the decoders' uint8 crops (a quarter of float32's bytes) and the training process
    normalises them: the batches equal each sample decoded and normalised on its own, with the same seeded draws."""
    import numpy as np
    import torch
    from PIL import Image

    from vitkit.data import build_data
    from vitkit.data.decode import RandomCropDecoder
    from vitkit.data.seeded import sample_seed, seeded_transform
    from vitkit.training.distributed import DistContext
    from vitkit.training.loaders import Loaders

    rng = np.random.default_rng(0)
    for split, count in (("train", 6), ("val", 2)):
        for name in ("cat", "dog"):
            (tmp_path / split / name).mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 256, (30 + i, 40, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(tmp_path / split / name / f"{i}.jpg", quality=90)
    data = build_data("folder", data_dir=tmp_path, image_size=16, cache="off", seed=3)
    assert data.train_normalise is not None, "the folder's default augmentation decodes at the crop's scale"
    assert data.train[0][0].dtype == torch.uint8
    loaders = Loaders(data, 4, 1, 0, 3, DistContext(), torch.device("cpu"))
    images, labels = next(loaders.epoch(2))
    aug = data.augment
    decoder = RandomCropDecoder(16, 3, data.mean, data.std, (aug.crop_scale_min, 1.0), aug.hflip)
    indices = list(loaders.sampler)[:4]
    expected = torch.stack([seeded_transform(decoder, data.train.base[i][0], sample_seed(3, 2, i)) for i in indices])
    assert images.dtype == torch.float32 and torch.equal(images, expected)
    assert labels.tolist() == [data.train.base[i][1] for i in indices]
