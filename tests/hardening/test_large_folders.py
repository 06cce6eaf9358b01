"""Large folders: predict and evaluate stream their results, so memory does not grow with the number of images.

The folder here has 600 images (benchmarks/predict_load.py measures 50,000); Python's allocations are traced
while the results flow, and the memory that vitkit's own code holds after the 600th image is what it held after the
100th. (PyTorch, torchvision and Pillow keep small caches of their own that grow slowly at first; they are not
results, and the benchmark shows the whole process's memory flat.)
"""

from __future__ import annotations

import contextlib
import gc
import io
import re
import sys
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from torch.utils.data import Dataset

import vitkit
from vitkit import cli
from vitkit.data import build_folder_eval_data
from vitkit.evaluation import evaluate
from vitkit.prediction import predict_files

COUNT = 600
FIRST = 100
GROWTH_LIMIT = 3 * 1024  # bytes: a few stray objects; keeping even one 8-byte number per image takes 4 KiB
VITKIT_SOURCES = str(Path(vitkit.__file__).parent / "*")


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("large")
    pixels = np.random.default_rng(0).integers(0, 256, (COUNT, 8, 8), dtype=np.uint8)
    for c in ("a", "b"):
        (root / c).mkdir()
    for i in range(COUNT):
        Image.fromarray(pixels[i], "L").save(root / "ab"[i % 2] / f"{i:05d}.png")
    return root


def held_by_vitkit() -> int:
    """Bytes still allocated by lines of vitkit's own code, after a garbage collection."""
    gc.collect()
    snapshot = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(True, VITKIT_SOURCES)])
    return sum(stat.size for stat in snapshot.statistics("filename"))


@contextlib.contextmanager
def traced() -> Iterator[None]:
    tracemalloc.start()
    try:
        yield
    finally:
        tracemalloc.stop()


def test_predict_streams_results_with_flat_memory(folder: Path, tiny_classifier) -> None:
    model = tiny_classifier(["a", "b"], channels=1)
    seen = 0
    with traced():
        for result in predict_files(model, [folder], top_k=1, batch_size=50):
            seen += 1
            assert "top_k" in result
            if seen == FIRST:
                held_early = held_by_vitkit()
        held_late = held_by_vitkit()
    assert seen == COUNT
    assert held_late - held_early < GROWTH_LIMIT, f"memory grew by {held_late - held_early} bytes"


class Probe(Dataset):
    """A data set that notes the traced memory when evaluation reaches sample FIRST and the last sample."""

    def __init__(self, base: Dataset) -> None:
        self.base, self.held = base, {}

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int):
        if index in (FIRST, len(self) - 1):
            self.held[index] = held_by_vitkit()
        return self.base[index]


def test_evaluate_keeps_counts_not_results(folder: Path, tiny_classifier) -> None:
    model = tiny_classifier(["a", "b"], channels=1)
    probe = Probe(build_folder_eval_data(folder, model.config))
    with traced():
        metrics = evaluate(model, probe, batch_size=50)
    assert metrics["num_samples"] == COUNT and sum(map(sum, metrics["confusion_matrix"])) == COUNT
    growth = probe.held[COUNT - 1] - probe.held[FIRST]
    assert growth < GROWTH_LIMIT, f"memory grew by {growth} bytes between sample {FIRST} and {COUNT - 1}"


class Terminal(io.StringIO):
    """A stderr that says it is a terminal, where vitkit shows its progress bars."""

    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_progress_bars_show_the_rate_on_a_terminal(
    command: str, folder: Path, tiny_classifier, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    run_dir = tiny_classifier(["a", "b"], channels=1).save_pretrained(tmp_path / "run")
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    options = [str(folder)] if command == "predict" else ["--data-dir", str(folder), "--json"]
    assert cli.main([command, str(run_dir), *options]) == 0
    bar = terminal.getvalue()
    assert f"{'predicting' if command == 'predict' else 'evaluating'}: " in bar and f"/{COUNT} [" in bar
    assert re.search(r"\d+(\.\d+)?(k)?img/s", bar), bar
    assert len(capsys.readouterr().out.splitlines()) == (COUNT if command == "predict" else 1)
