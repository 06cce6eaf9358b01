"""`vitkit serve`: flags to settings, loopback by default, one app or one per worker process (uvicorn stubbed out)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from serve_helpers import png_bytes

from vitkit.cli import main

pytest.importorskip("uvicorn", reason="vitkit serve needs the `serve` extra (uvicorn)")


def test_several_workers_rebuild_the_app_from_the_environment(run_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--workers N hands uvicorn an import string; each worker process builds the app from VITKIT_SERVE."""
    import importlib

    import uvicorn
    from fastapi.testclient import TestClient

    from vitkit.serve.app import ENVIRONMENT_VARIABLE

    launched = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: launched.update(app=app, **options))
    monkeypatch.delenv(ENVIRONMENT_VARIABLE, raising=False)
    threads = torch.get_num_threads()
    try:
        assert main(["serve", str(run_dir), "--workers", "2", "--port", "8123", "--max-files", "3", "--fast"]) == 0
        assert (launched["workers"], launched["factory"], launched["port"]) == (2, True, 8123)
        module, factory = launched["app"].split(":")
        app = getattr(importlib.import_module(module), factory)()  # what each worker process runs
        assert torch.get_num_threads() == max(1, threads // 2), "the workers share the cores"
    finally:
        torch.set_num_threads(threads)
    with TestClient(app) as client:
        info = client.get("/model").json()
        assert (info["name"], info["limits"]["max_files"], info["fast"]) == ("tiny-run", 3, True)
        assert client.post("/predict", files=[("files", ("a.png", png_bytes(1), "image/png"))]).status_code == 200


def test_one_worker_serves_the_loaded_app_on_loopback_by_default(run_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    import uvicorn
    from fastapi.testclient import TestClient

    launched = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: launched.update(app=app, **options))
    assert main(["serve", str(run_dir), "--max-batch", "4", "--max-files", "2"]) == 0
    assert (launched["host"], launched["port"]) == ("127.0.0.1", 8000)
    with TestClient(launched["app"]) as client:
        assert client.get("/model").json()["limits"]["max_files"] == 2
        assert client.post("/predict", files=[("files", ("a.png", png_bytes(1), "image/png"))]).status_code == 200
    assert "serving tiny-run on http://127.0.0.1:8000/" in capsys.readouterr().out


def test_listening_beyond_loopback_warns(run_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    import uvicorn

    monkeypatch.setattr(uvicorn, "run", lambda app, **options: None)
    assert main(["serve", str(run_dir), "--host", "0.0.0.0"]) == 0
    assert "warning: listening on 0.0.0.0" in capsys.readouterr().out


def test_serve_rejects_a_missing_run_folder_and_bad_limits(tmp_path: Path, run_dir: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["serve", str(tmp_path / "missing")]) == 2
    assert "run folder not found" in capsys.readouterr().err
    assert main(["serve", str(run_dir), "--max-megabytes", "0"]) == 2
    assert "--max-megabytes and --max-megapixels must be > 0" in capsys.readouterr().err
