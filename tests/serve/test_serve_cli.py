"""`vitkit serve`: flags to settings, loopback by default, one app or one per worker process (uvicorn stubbed out)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from serve_helpers import png_bytes

from vitkit.cli import main

pytest.importorskip("uvicorn", reason="vitkit serve needs the `serve` extra (uvicorn)")


def test_several_workers_rebuild_the_app_from_the_environment(
    run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--workers N hands uvicorn an import string; each worker process builds the app from VITKIT_SERVE, which
    names the key file but holds no key."""
    import importlib

    import uvicorn
    from fastapi.testclient import TestClient

    from vitkit.serve.app import ENVIRONMENT_VARIABLE

    launched = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: launched.update(app=app, **options))
    monkeypatch.delenv(ENVIRONMENT_VARIABLE, raising=False)
    torch.set_num_threads(4)  # the tests' one thread would leave nothing to share
    keys = tmp_path / "keys.txt"
    keys.write_text("secret-worker-key\n", encoding="utf-8")
    try:
        flags = ["--workers", "2", "--port", "8123", "--max-files", "3", "--fast", "--api-key-file", str(keys)]
        assert main(["serve", str(run_dir), *flags]) == 0
        assert "secret-worker-key" not in os.environ[ENVIRONMENT_VARIABLE]
        assert (launched["workers"], launched["factory"], launched["port"]) == (2, True, 8123)
        module, factory = launched["app"].split(":")
        app = getattr(importlib.import_module(module), factory)()  # what each worker process runs
        assert torch.get_num_threads() == 2, "the workers share the cores"
    finally:
        torch.set_num_threads(1)
    with TestClient(app, headers={"Authorization": "Bearer secret-worker-key"}) as client:
        info = client.get("/model").json()
        assert (info["name"], info["limits"]["max_files"], info["fast"]) == ("tiny-run", 3, True)
        assert client.post("/predict", files=[("files", ("a.png", png_bytes(1), "image/png"))]).status_code == 200
        assert client.get("/model", headers={"Authorization": "Bearer other"}).status_code == 401


def test_one_worker_serves_the_loaded_app_on_loopback_by_default(
    run_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
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


def test_listening_beyond_loopback_without_a_key_warns_how_to_set_one(
    run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    import uvicorn

    monkeypatch.setattr(uvicorn, "run", lambda app, **options: None)
    assert main(["serve", str(run_dir), "--host", "0.0.0.0"]) == 0
    out = capsys.readouterr().out
    assert "warning: listening on 0.0.0.0 without an API key" in out and "--api-key-file" in out
    keys = tmp_path / "keys.txt"
    keys.write_text("a-key\n", encoding="utf-8")
    assert main(["serve", str(run_dir), "--host", "0.0.0.0", "--api-key-file", str(keys)]) == 0
    assert "warning" not in capsys.readouterr().out


def test_operations_flags_reach_the_app_and_uvicorn(
    run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import uvicorn
    from fastapi.testclient import TestClient

    launched = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: launched.update(app=app, **options))
    keys = tmp_path / "keys.txt"
    keys.write_text("the-key\n", encoding="utf-8")
    flags = ["--max-queue", "40", "--timeout-s", "7.5", "--drain-s", "12", "--api-key-file", str(keys),
             "--cors-origin", "https://a.example", "--cors-origin", "https://b.example"]  # fmt: skip
    assert main(["serve", str(run_dir), *flags]) == 0
    assert launched["timeout_graceful_shutdown"] == 12
    settings = launched["app"].state.service.settings
    assert (settings.max_queue, settings.timeout_s, settings.drain_s) == (40, 7.5, 12)
    with TestClient(launched["app"]) as client:
        assert client.get("/model").status_code == 401
        answer = client.get("/model", headers={"Authorization": "Bearer the-key", "Origin": "https://b.example"})
        assert answer.status_code == 200 and answer.headers["access-control-allow-origin"] == "https://b.example"
    assert client.app.state.metrics.registry.get_sample_value("vitkit_model_load_seconds") > 0, "loading was timed"


def test_serve_rejects_a_missing_run_folder_and_bad_limits(
    tmp_path: Path, run_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    assert main(["serve", str(tmp_path / "missing")]) == 2
    assert "run folder not found" in capsys.readouterr().err
    assert main(["serve", str(run_dir), "--max-megabytes", "0"]) == 2
    assert "--max-megabytes and --max-megapixels must be > 0" in capsys.readouterr().err
    assert main(["serve", str(run_dir), "--max-queue", "4"]) == 2
    assert "max_queue (4) must be at least max_files (16)" in capsys.readouterr().err
    assert main(["serve", str(run_dir), "--api-key-file", str(tmp_path / "nokeys.txt")]) == 2
    assert "API key file not found" in capsys.readouterr().err
