"""Requests/s and latency of `vitkit serve` under 1, 8 and 32 concurrent clients: batched vs one-at-a-time.

Two real `vitkit serve` processes run on loopback with the same model (random weights: speed does not depend on
their values): one batching concurrent requests (--max-batch 32, --max-wait-ms 5), one answering one request at a
time (--max-batch 1). An asyncio load generator in this process keeps N clients busy, each sending one JPEG per
request and waiting for the answer before sending the next. Rounds alternate between the two servers so that noise
on this shared machine hits both alike; the table shows medians over the rounds, and the batched/one-at-a-time
ratio of requests/s (> 1: batching wins). Every run is bounded by --requests and --max-seconds.

    python benchmarks/serve_load.py [--model vit_tiny_patch16_224] [--requests 96] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import torch
from PIL import Image

import vitkit


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(run_dir: Path, max_batch: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [sys.executable, "-m", "vitkit", "-q", "serve", str(run_dir), "--port", str(port),
               "--max-batch", str(max_batch), "--max-wait-ms", "5"]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"vitkit serve exited: {process.stderr.read() if process.stderr else ''}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return process, url
        except httpx.TransportError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError("vitkit serve did not start within 180 s")


def jpeg(width: int = 320, height: int = 240) -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


async def load(url: str, clients: int, requests: int, image: bytes, max_seconds: float) -> tuple[float, list[float]]:
    """`requests` requests from `clients` concurrent clients; (wall seconds, per-request latencies in seconds)."""
    latencies: list[float] = []
    per_client = [requests // clients + (i < requests % clients) for i in range(clients)]
    async with httpx.AsyncClient(base_url=url, timeout=max_seconds, limits=httpx.Limits(max_connections=clients)) as http:

        async def client(count: int) -> None:
            for _ in range(count):
                start = time.perf_counter()
                response = await http.post("/predict", files=[("files", ("image.jpg", image, "image/jpeg"))])
                response.raise_for_status()
                latencies.append(time.perf_counter() - start)

        start = time.perf_counter()
        await asyncio.wait_for(asyncio.gather(*(client(count) for count in per_client)), max_seconds)
        return time.perf_counter() - start, latencies


def images_per_forward(url: str, before: dict) -> float:
    after = httpx.get(f"{url}/health").json()
    return (after["images"] - before["images"]) / max(1, after["forward_passes"] - before["forward_passes"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vit_tiny_patch16_224")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--requests", type=int, default=96, help="requests per round and concurrency level")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-seconds", type=float, default=120, help="time limit of one round")
    args = parser.parse_args()

    torch.manual_seed(0)
    image = jpeg()
    with tempfile.TemporaryDirectory() as tmp:
        channels = vitkit.get_config(args.model).in_channels
        model = vitkit.create_model(args.model, mean=(0.5,) * channels, std=(0.5,) * channels)
        run_dir = model.save_pretrained(Path(tmp) / args.model)
        servers = {mode: start_server(run_dir, max_batch) for mode, max_batch in (("batched", 32), ("one-at-a-time", 1))}
        try:
            for _, url in servers.values():  # warm-up: first requests pay for lazy initialisation
                asyncio.run(load(url, 4, 8, image, args.max_seconds))
            print(f"{args.model}, {os.cpu_count()} CPUs, torch {torch.__version__}; {args.requests} requests a round, "
                  f"median of {args.rounds} rounds")  # fmt: skip
            print(f"{'clients':>7}  {'server':<14} {'req/s':>7} {'p50 ms':>8} {'p99 ms':>8} {'img/forward':>11}")
            for clients in args.clients:
                rates: dict[str, list[float]] = {mode: [] for mode in servers}
                p50s: dict[str, list[float]] = {mode: [] for mode in servers}
                p99s: dict[str, list[float]] = {mode: [] for mode in servers}
                batch: dict[str, list[float]] = {mode: [] for mode in servers}
                for _ in range(args.rounds):
                    for mode, (_, url) in servers.items():
                        before = httpx.get(f"{url}/health").json()
                        seconds, latencies = asyncio.run(load(url, clients, args.requests, image, args.max_seconds))
                        rates[mode].append(len(latencies) / seconds)
                        p50s[mode].append(1000 * float(np.percentile(latencies, 50)))
                        p99s[mode].append(1000 * float(np.percentile(latencies, 99)))
                        batch[mode].append(images_per_forward(url, before))
                for mode in servers:
                    print(f"{clients:>7}  {mode:<14} {statistics.median(rates[mode]):>7.1f} "
                          f"{statistics.median(p50s[mode]):>8.1f} {statistics.median(p99s[mode]):>8.1f} "
                          f"{statistics.median(batch[mode]):>11.1f}")  # fmt: skip
                ratio = statistics.median(a / b for a, b in zip(rates["batched"], rates["one-at-a-time"]))
                print(f"{clients:>7}  batched / one-at-a-time requests/s: {ratio:.2f}x")
        finally:
            for process, _ in servers.values():
                process.terminate()
                process.wait(timeout=30)


if __name__ == "__main__":
    main()
