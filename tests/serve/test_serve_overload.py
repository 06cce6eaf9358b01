"""Overload: beyond --max-queue a request gets 503 with Retry-After at once, a request never waits past
--timeout-s (504), every 200 is the answer for its own image, and the server keeps serving afterwards.

The model is held behind a Gate, so which requests wait and which are refused does not depend on timing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from serve_helpers import CLASSES, Gate, direct_probabilities, png_bytes, probabilities_of, running_server

from vitkit import VisionTransformer

pytest.importorskip("uvicorn", reason="vitkit serve needs the `serve` extra (uvicorn)")
import httpx  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from vitkit.serve import ServeSettings, create_app  # noqa: E402

CLIENTS = 64
MAX_QUEUE = 8
TIMEOUT_S = 30.0


async def overload(
    url: str, images: list[bytes], gate: Gate, queued: Callable[[], int]
) -> tuple[list[tuple[int, httpx.Response, float]], int]:
    """Every image from its own client at once while the model is held. The gate opens once every request is
    accounted for: answered (refused), in the held forward pass, or waiting in the queue. (index, response,
    seconds) per request, and the number of requests accepted when the gate opened."""
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=httpx.Limits(max_connections=CLIENTS)) as http:

        async def client(index: int) -> tuple[int, httpx.Response, float]:
            files = [("files", (f"image-{index}.png", images[index], "image/png"))]
            start = time.perf_counter()
            response = await http.post("/predict", params={"top_k": len(CLASSES)}, files=files)
            return index, response, time.perf_counter() - start

        gate.close()
        tasks = [asyncio.ensure_future(client(index)) for index in range(len(images))]
        await asyncio.to_thread(gate.entered.wait, 60)
        running = gate.sizes[-1]  # images in the forward pass that is held
        while sum(task.done() for task in tasks) + running + queued() < len(images):
            await asyncio.wait(tasks, timeout=0.05, return_when=asyncio.FIRST_COMPLETED)  # a request may be on its way
        accepted = running + queued()
        assert queued() <= MAX_QUEUE
        gate.opened.set()
        return list(await asyncio.gather(*tasks)), accepted


def test_overload_refuses_with_retry_after_and_answers_each_accepted_image(
    run_dir: Path, served_model: VisionTransformer
) -> None:
    images = [png_bytes(seed) for seed in range(CLIENTS)]
    expected = direct_probabilities(served_model, images)
    settings = ServeSettings(max_batch=4, max_wait_ms=0, max_queue=MAX_QUEUE, max_files=4, timeout_s=TIMEOUT_S)
    app = create_app(run_dir, settings=settings)
    gate = app.state.service.predictor = Gate(app.state.service.predictor)
    with running_server(app) as url:
        assert app.state.service.warm.wait(60)
        answers, accepted = asyncio.run(
            asyncio.wait_for(overload(url, images, gate, lambda: app.state.service.batcher.queued), 120)
        )
        after = httpx.post(f"{url}/predict", files=[("files", ("after.png", images[0], "image/png"))])

    statuses = [response.status_code for _, response, _ in answers]
    assert set(statuses) == {200, 503}, statuses
    assert statuses.count(200) == accepted, "the held forward pass and the queue were answered, nothing else"
    refused = [response for _, response, _ in answers if response.status_code == 503]
    assert len(refused) == CLIENTS - accepted >= CLIENTS - MAX_QUEUE - settings.max_batch
    for response in refused:
        assert int(response.headers["Retry-After"]) >= 1
        assert "overloaded" in response.json()["error"]
    assert max(seconds for _, _, seconds in answers) < TIMEOUT_S, "no request waited past --timeout-s"
    for index, response, _ in answers:
        if response.status_code == 200:
            (answer,) = response.json()["predictions"]
            assert answer["filename"] == f"image-{index}.png"
            assert torch.allclose(probabilities_of(answer, CLASSES), expected[index], atol=1e-5), (
                f"image {index} mixed up"
            )
    assert after.status_code == 200, "the server keeps serving after the overload"


def test_a_request_past_timeout_s_gets_504_and_the_server_keeps_serving(served_model: VisionTransformer) -> None:
    app = create_app(served_model, settings=ServeSettings(timeout_s=0.2))
    gate = app.state.service.predictor = Gate(app.state.service.predictor)
    files = [("files", ("a.png", png_bytes(1), "image/png"))]
    with TestClient(app) as client:
        assert app.state.service.warm.wait(60)
        gate.close()
        late = client.post("/predict", files=files)
        gate.opened.set()
        assert late.status_code == 504, late.text
        assert late.json() == {"error": "the request took longer than the limit of 0.2 s"}
        assert client.post("/predict", files=files).status_code == 200
