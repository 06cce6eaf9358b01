"""Fixtures shared across the test folders, and the rule that a skip fails under CI."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest
import torch

from vitkit import VisionTransformer


def skips_fail() -> bool:
    """Under CI (``CI`` set, not to 0/false/no) nothing may be skipped: `make test` installs the dev extra and
    Chromium, so a skip there means something the tests need is missing, which must fail instead of passing quietly."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _fail_if_skipped(report: pytest.CollectReport | pytest.TestReport) -> None:
    if report.skipped and not hasattr(report, "wasxfail") and skips_fail():
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped under CI, where nothing may be skipped: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Iterator[None]:
    """A module skipped as it is collected (a module-level ``pytest.importorskip``) fails under CI."""
    outcome = yield
    _fail_if_skipped(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    """A test skipped as it runs (``pytest.skip``, ``importorskip``, a ``skipif`` mark) fails under CI."""
    outcome = yield
    _fail_if_skipped(outcome.get_result())


@pytest.fixture
def tiny_classifier() -> Callable[..., VisionTransformer]:
    """tiny_classifier(names, channels=1, **overrides): a seeded one-block ViT on 8x8 images, for fast tests."""

    def make(names: list[str], channels: int = 1, **overrides: object) -> VisionTransformer:
        torch.manual_seed(0)
        options: dict[str, object] = dict(
            image_size=8, patch_size=4, in_channels=channels, num_classes=len(names), hidden_dim=16, depth=1,
            num_heads=2, mlp_dim=32, class_names=names,
        )  # fmt: skip
        return VisionTransformer(**{**options, **overrides})

    return make


@pytest.fixture(autouse=True, scope="session")
def one_thread() -> Iterator[None]:
    """Every test and fixture runs on one CPU thread: tiny models gain nothing from more; on a loaded machine two
    threads wait on each other for whole scheduler slices (the tests outside tests/training took 2.5 times as long
    with two); subprocess runs (started with OMP_NUM_THREADS=1) compute exactly what in-process runs compute, bit
    for bit. A test that needs more threads sets them itself."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _back_to_one_thread() -> Iterator[None]:
    """A test that sets another thread count (`vitkit serve --workers`, `bench --threads`) leaves the next at one."""
    yield
    torch.set_num_threads(1)


@pytest.fixture
def no_run_pictures(monkeypatch: pytest.MonkeyPatch) -> None:
    """Training runs end without their pictures and metric plots: drawing them is most of a tiny run's time
    (tests/training/test_run_pictures.py and test_metrics.py look at them)."""
    monkeypatch.setattr("vitkit.explain.report.write_run_pictures", lambda *args, **kwargs: None)
    monkeypatch.setattr("vitkit.training.metrics.MetricsLog._plot", lambda *args: None)


@pytest.fixture(autouse=True, scope="session")
def private_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The folder indexes the tests build go to a folder of their own, not to the user's cache (VITKIT_CACHE_DIR);
    subprocesses inherit it."""
    patch = pytest.MonkeyPatch()
    patch.setenv("VITKIT_CACHE_DIR", str(tmp_path_factory.mktemp("vitkit-cache")))
    yield
    patch.undo()
