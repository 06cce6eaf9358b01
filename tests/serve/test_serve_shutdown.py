"""SIGTERM on a real `vitkit serve` process: it finishes every request it accepted, then exits 0.

The 32 requests wait in a batch that would wait ten minutes to fill (--max-wait-ms 600000), so they are all
still waiting when SIGTERM comes; the drain must run them at once for the test to finish.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from serve_helpers import CLASSES, direct_probabilities, png_bytes, probabilities_of

from vitkit import VisionTransformer

pytest.importorskip("uvicorn", reason="vitkit serve needs the `serve` extra (uvicorn)")
import httpx  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

CLIENTS = 32
SOURCE = Path(__file__).resolve().parents[2] / "src"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(condition, what: str, process: subprocess.Popen, limit_s: float = 120) -> None:
    """Poll ``condition`` (a subprocess offers no event to wait on) until it holds; fail if the server died."""
    start = time.monotonic()
    while not condition():
        if process.poll() is not None:
            raise AssertionError(
                f"vitkit serve exited with {process.returncode} before {what}: {process.stderr.read()}"
            )
        if time.monotonic() - start > limit_s:
            raise AssertionError(f"vitkit serve: no {what} within {limit_s} s")
        time.sleep(0.05)


def answers(url: str, path: str) -> httpx.Response | None:
    try:
        return httpx.get(url + path, timeout=5)
    except httpx.TransportError:
        return None


def queued_images(url: str) -> float:
    response = answers(url, "/metrics")
    if response is None:
        return 0.0
    families = {family.name: family for family in text_string_to_metric_families(response.text)}
    return families["vitkit_queue_images"].samples[0].value


async def send_all(url: str, images: list[bytes]) -> list[httpx.Response]:
    params = {"top_k": len(CLASSES)}
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=httpx.Limits(max_connections=CLIENTS)) as http:
        return list(await asyncio.gather(*(
            http.post("/predict", params=params, files=[("files", (f"image-{i}.png", image, "image/png"))])
            for i, image in enumerate(images)
        )))  # fmt: skip


async def sigterm_while_waiting(url: str, images: list[bytes], process: subprocess.Popen) -> list[httpx.Response]:
    requests = asyncio.ensure_future(send_all(url, images))
    await asyncio.to_thread(wait_until, lambda: queued_images(url) == CLIENTS, f"{CLIENTS} queued images", process)
    process.send_signal(signal.SIGTERM)
    return await requests


def test_sigterm_finishes_the_accepted_requests_and_exits_0(run_dir: Path, served_model: VisionTransformer) -> None:
    images = [png_bytes(seed) for seed in range(CLIENTS)]
    expected = direct_probabilities(served_model, images)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "vitkit", "-q", "serve", str(run_dir), "--port", str(port), "--max-batch", "64",
               "--max-wait-ms", "600000", "--drain-s", "60", "--timeout-s", "120"]  # fmt: skip
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(SOURCE)}
    process = subprocess.Popen(command, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: getattr(answers(url, "/readyz"), "status_code", None) == 200, "readiness", process)
        responses = asyncio.run(sigterm_while_waiting(url, images, process))
        returncode = process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert returncode == 0, process.stderr.read()
    for index, response in enumerate(responses):
        assert response.status_code == 200, response.text
        (answer,) = response.json()["predictions"]
        assert answer["filename"] == f"image-{index}.png"
        assert torch.allclose(probabilities_of(answer, CLASSES), expected[index], atol=1e-5), f"image {index} mixed up"
    assert answers(url, "/livez") is None, "the server no longer accepts connections"
