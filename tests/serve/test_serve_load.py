"""A real server on loopback under concurrent clients: nothing dropped, nothing mixed up, forward passes shared."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch
from serve_helpers import CLASSES, direct_probabilities, png_bytes, probabilities_of, running_server

from vitkit import VisionTransformer

pytest.importorskip("uvicorn", reason="vitkit serve needs the `serve` extra (uvicorn)")
import httpx  # noqa: E402

from vitkit.serve import ServeSettings, create_app  # noqa: E402

CLIENTS = 32
REQUESTS_PER_CLIENT = 2


async def hammer(url: str, images: list[bytes]) -> list[tuple[int, httpx.Response]]:
    """CLIENTS concurrent clients, each sending its own images one request after another."""
    limits = httpx.Limits(max_connections=CLIENTS)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as http:

        async def client(number: int) -> list[tuple[int, httpx.Response]]:
            answers = []
            for index in range(number, len(images), CLIENTS):
                files = [("files", (f"image-{index}.png", images[index], "image/png"))]
                answers.append((index, await http.post("/predict", params={"top_k": len(CLASSES)}, files=files)))
            return answers

        per_client = await asyncio.gather(*(client(number) for number in range(CLIENTS)))
    return [answer for answers in per_client for answer in answers]


def test_concurrent_clients_each_get_the_answer_for_their_own_image(
    run_dir: Path, served_model: VisionTransformer
) -> None:
    images = [png_bytes(seed) for seed in range(CLIENTS * REQUESTS_PER_CLIENT)]
    expected = direct_probabilities(served_model, images)
    gaps = (expected[:, None] - expected[None]).abs().amax(dim=-1) + torch.eye(len(images))
    assert float(gaps.min()) > 1e-3, "the test images must be told apart by their probabilities"

    app = create_app(run_dir, settings=ServeSettings(max_batch=32, max_wait_ms=5))
    with running_server(app) as url:
        answers = asyncio.run(asyncio.wait_for(hammer(url, images), timeout=120))
        health = httpx.get(f"{url}/health").json()

    assert sorted(index for index, _ in answers) == list(range(len(images))), "every request was answered once"
    for index, response in answers:
        assert response.status_code == 200, response.text
        (answer,) = response.json()["predictions"]
        assert answer["filename"] == f"image-{index}.png"
        assert torch.allclose(probabilities_of(answer, CLASSES), expected[index], atol=1e-5), f"image {index} mixed up"
    assert health["images"] == len(images)
    assert health["forward_passes"] < len(images) / 2, f"requests were not batched: {health}"
