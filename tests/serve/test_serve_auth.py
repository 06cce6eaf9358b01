"""Who may call: with a key file every endpoint but the probes needs 'Authorization: Bearer KEY'; CORS is off
unless origins are named."""

from __future__ import annotations

from pathlib import Path

import pytest
from serve_helpers import png_bytes

from vitkit import VisionTransformer

pytest.importorskip("fastapi", reason="vitkit serve needs the `serve` extra (fastapi)")
from fastapi.testclient import TestClient  # noqa: E402

from vitkit.serve import create_app  # noqa: E402

KEYS = ["first-key-0123456789", "second-key-abcdef"]
GUARDED = [("GET", "/"), ("GET", "/model"), ("GET", "/health"), ("GET", "/metrics"), ("GET", "/docs"),
           ("GET", "/openapi.json"), ("GET", "/static/app.js"), ("POST", "/predict")]  # fmt: skip


def test_api_keys_guard_every_endpoint_but_the_probes(served_model: VisionTransformer, tmp_path: Path) -> None:
    key_file = tmp_path / "keys.txt"
    key_file.write_text(f"# keys of this server\n{KEYS[0]}\n\n  {KEYS[1]}  \n", encoding="utf-8")
    files = [("files", ("a.png", png_bytes(1), "image/png"))]
    with TestClient(create_app(served_model, api_key_file=key_file)) as client:
        assert client.app.state.service.warm.wait(60)
        for method, path in GUARDED:
            for headers in ({}, {"Authorization": "Bearer wrong-key"}, {"Authorization": f"Bearer {KEYS[0]}x"},
                            {"Authorization": f"Basic {KEYS[0]}"}, {"Authorization": KEYS[0]}):  # fmt: skip
                response = client.request(method, path, headers=headers)
                assert response.status_code == 401, (path, headers)
                assert "Authorization: Bearer KEY" in response.json()["error"]
                assert response.headers["www-authenticate"].startswith("Bearer")
        for key in KEYS:  # every key of the file, the one on a padded line too
            right = {"Authorization": f"Bearer {key}"}
            assert client.post("/predict", files=files, headers=right).status_code == 200
            assert client.get("/model", headers=right).status_code == 200
        assert client.get("/livez").status_code == 200 and client.get("/readyz").status_code == 200
        metrics = client.get("/metrics", headers={"Authorization": f"Bearer {KEYS[1]}"}).text
        assert 'vitkit_requests_total{endpoint="/predict",status="401"} 5.0' in metrics, "refusals are counted"


def test_a_key_file_without_keys_or_missing_is_refused(served_model: VisionTransformer, tmp_path: Path) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("# no key yet\n\n", encoding="utf-8")
    with pytest.raises(ValueError, match="empty.txt holds no API key"):
        create_app(served_model, api_key_file=empty)
    with pytest.raises(FileNotFoundError, match="API key file not found: .*missing.txt"):
        create_app(served_model, api_key_file=tmp_path / "missing.txt")


def test_cors_is_off_unless_origins_are_named(served_model: VisionTransformer) -> None:
    origin = {"Origin": "https://app.example.org"}
    preflight = {**origin, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"}
    with TestClient(create_app(served_model)) as client:
        assert "access-control-allow-origin" not in client.get("/model", headers=origin).headers
        assert client.options("/predict", headers=preflight).status_code == 405
    with TestClient(create_app(served_model, cors_origins=["https://app.example.org"])) as client:
        assert client.get("/model", headers=origin).headers["access-control-allow-origin"] == "https://app.example.org"
        allowed = client.options("/predict", headers=preflight)
        assert allowed.status_code == 200 and "authorization" in allowed.headers["access-control-allow-headers"].lower()
        other = client.get("/model", headers={"Origin": "https://elsewhere.example.com"})
        assert "access-control-allow-origin" not in other.headers
