"""GET /metrics: Prometheus text that its own parser reads, with counters that follow the requests sent."""

from __future__ import annotations

from pathlib import Path

import pytest
from serve_helpers import png_bytes

from vitkit import VisionTransformer

pytest.importorskip("fastapi", reason="vitkit serve needs the `serve` extra (fastapi)")
from fastapi.testclient import TestClient  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from vitkit.serve import ServeSettings, create_app  # noqa: E402


def scrape(client: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics as {(name, sorted labels): value}, read by prometheus_client's parser."""
    response = client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def test_metrics_parse_and_move_with_the_requests(run_dir: Path) -> None:
    image = [("files", ("a.png", png_bytes(1), "image/png"))]
    two_images = image + [("files", ("b.png", png_bytes(2), "image/png"))]
    with TestClient(create_app(run_dir, settings=ServeSettings(max_queue=32))) as client:
        assert client.app.state.service.warm.wait(60)
        before = scrape(client)
        assert client.post("/predict", files=image).status_code == 200
        assert client.post("/predict", files=two_images).status_code == 200
        assert client.post("/predict", content=b"x", headers={"content-type": "image/png"}).status_code == 415
        assert client.get("/nowhere").status_code == 404
        after = scrape(client)
        health = client.get("/health").json()

    def moved(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert moved("vitkit_requests_total", endpoint="/predict", status="200") == 2
    assert moved("vitkit_requests_total", endpoint="/predict", status="415") == 1
    assert moved("vitkit_requests_total", endpoint="other", status="404") == 1, "unknown paths share one label"
    assert moved("vitkit_requests_total", endpoint="/metrics", status="200") == 1, "the first scrape is counted"
    assert moved("vitkit_request_seconds_count", endpoint="/predict") == 3
    assert moved("vitkit_request_seconds_sum", endpoint="/predict") > 0
    assert moved("vitkit_forward_images_sum") == 3 == health["images"]
    assert moved("vitkit_forward_images_count") == health["forward_passes"] == moved("vitkit_forward_seconds_count")
    assert (
        moved("vitkit_forward_images_bucket", le="1.0") >= 1
        and moved("vitkit_forward_images_bucket", le="2.0") == health["forward_passes"]
    )
    assert after[("vitkit_requests_in_flight", ())] == 1, "the scrape itself"
    assert after[("vitkit_queue_images", ())] == 0
    assert after[("vitkit_model_load_seconds", ())] > 0, "loading the folder was timed"
    assert after[("vitkit_model_warmup_seconds", ())] > 0 and after[("vitkit_ready", ())] == 1


def test_each_app_counts_in_its_own_registry(served_model: VisionTransformer) -> None:
    first, second = create_app(served_model), create_app(served_model)
    with TestClient(first) as one, TestClient(second) as other:
        assert one.post("/predict", files=[("files", ("a.png", png_bytes(1), "image/png"))]).status_code == 200
        assert ("vitkit_requests_total", (("endpoint", "/predict"), ("status", "200"))) in scrape(one)
        assert ("vitkit_requests_total", (("endpoint", "/predict"), ("status", "200"))) not in scrape(other)
