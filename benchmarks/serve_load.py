"""Requests/s and latency of `vitkit serve` under 1, 8, 32 and 128 concurrent clients, batched vs one-at-a-time,
and what overload does: at 128 clients with --max-queue 64, how many requests got 503 and how long an accepted
request took.

For each model (random weights: speed does not depend on their values) two real `vitkit serve` processes run on
loopback: one batching concurrent requests (--max-batch 32, --max-wait-ms 5), one answering one request at a time
(--max-batch 1), both with --max-queue 64. An asyncio load generator in this process keeps N clients busy, each
sending one JPEG per request and sending the next as soon as an answer (200 or 503) comes; clients do not retry.
Rounds alternate between the two servers so that noise on a shared machine hits both alike; figures are medians
over the rounds, and the batched/one-at-a-time ratio of requests/s (> 1: batching wins) is the comparison to read.

Writes benchmarks/results/serve.json and, from it, the table between the markers of the serving guide:

    python benchmarks/serve_load.py [--models vit_digits vit_tiny_patch16_224] [--requests 96] [--rounds 1]
    python benchmarks/serve_load.py --table-only    # regenerate the guide's table from serve.json
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import platform
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
from vitkit.io import read_json, write_json

RESULTS = Path(__file__).parent / "results" / "serve.json"
GUIDE = Path(__file__).parents[1] / "docs" / "guides" / "serving-production.md"
TABLE_START, TABLE_END = "<!-- serve-load-table: start -->", "<!-- serve-load-table: end -->"
SERVERS = {"batched": 32, "one-at-a-time": 1}  # --max-batch of each
MAX_QUEUE = 64
NAMES = {"vit_tiny_patch16_224": "ViT-Ti/16", "vit_digits": "vit_digits"}
DESCRIPTION = (
    "`python benchmarks/serve_load.py`: for each model, two `vitkit serve` processes on loopback, one batching "
    "(--max-batch 32, --max-wait-ms 5) and one answering one request at a time (--max-batch 1), both with "
    "--max-queue 64, under 1 to 128 concurrent clients each sending one 320x240 JPEG per request. Requests/s and "
    "latencies count the answered (200) requests; at 128 clients some are refused with 503 at once, and the p50/p99 "
    "of those rows are the latencies of accepted requests under overload."
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(run_dir: Path, max_batch: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [sys.executable, "-m", "vitkit", "-q", "serve", str(run_dir), "--port", str(port),
               "--max-batch", str(max_batch), "--max-wait-ms", "5", "--max-queue", str(MAX_QUEUE)]  # fmt: skip
    source = str(Path(vitkit.__file__).parents[1])  # the servers run the vitkit that this script imported
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [source, os.environ.get("PYTHONPATH")]))}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"vitkit serve exited: {process.stderr.read() if process.stderr else ''}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    process.kill()
    raise RuntimeError("vitkit serve was not ready within 300 s")


def jpeg(width: int = 320, height: int = 240) -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


async def load(
    url: str, clients: int, requests: int, image: bytes, max_seconds: float
) -> tuple[float, list[float], int, int]:
    """`requests` requests from `clients` concurrent clients: (wall seconds, latencies of the 200s, number of 503s,
    number of requests lost to a closed connection: a kept-alive connection that the server closed as the client
    reused it, which the client would send again)."""
    latencies: list[float] = []
    refused = lost = 0
    per_client = [requests // clients + (i < requests % clients) for i in range(clients)]
    async with httpx.AsyncClient(
        base_url=url, timeout=max_seconds, limits=httpx.Limits(max_connections=clients)
    ) as http:

        async def client(count: int) -> None:
            nonlocal refused, lost
            for _ in range(count):
                start = time.perf_counter()
                try:
                    response = await http.post("/predict", files=[("files", ("image.jpg", image, "image/jpeg"))])
                except httpx.TransportError:
                    lost += 1
                    continue
                if response.status_code == 503:
                    refused += 1
                    continue
                response.raise_for_status()
                latencies.append(time.perf_counter() - start)

        start = time.perf_counter()
        await asyncio.wait_for(asyncio.gather(*(client(count) for count in per_client)), max_seconds)
        return time.perf_counter() - start, latencies, refused, lost


def images_per_forward(url: str, before: dict) -> float:
    after = httpx.get(f"{url}/health").json()
    return (after["images"] - before["images"]) / max(1, after["forward_passes"] - before["forward_passes"])


def measure_model(
    name: str, clients_levels: list[int], requests: int, rounds: int, max_seconds: float, image: bytes
) -> list[dict]:
    """One record per (clients, server): medians over the rounds, and the batched/one-at-a-time ratio of requests/s."""
    torch.manual_seed(0)
    records = []
    with tempfile.TemporaryDirectory() as tmp:
        channels = vitkit.get_config(name).in_channels
        run_dir = vitkit.create_model(name, mean=(0.5,) * channels, std=(0.5,) * channels).save_pretrained(
            Path(tmp) / name
        )
        servers = {mode: start_server(run_dir, max_batch) for mode, max_batch in SERVERS.items()}
        try:
            for _, url in servers.values():  # warm-up beyond the server's own pass: the HTTP path, the thread pools
                asyncio.run(load(url, 4, 8, image, max_seconds))
            for clients in clients_levels:
                count = max(requests, 2 * clients)  # every client sends at least two requests
                runs: dict[str, list[dict]] = {mode: [] for mode in servers}
                for _ in range(rounds):
                    for mode, (_, url) in servers.items():
                        before = httpx.get(f"{url}/health").json()
                        seconds, latencies, refused, lost = asyncio.run(load(url, clients, count, image, max_seconds))
                        runs[mode].append({
                            "requests_per_s": len(latencies) / seconds,
                            "p50_ms": 1000 * float(np.percentile(latencies, 50)),
                            "p99_ms": 1000 * float(np.percentile(latencies, 99)),
                            "refused_503": refused,
                            "connection_lost": lost,
                            "images_per_forward": images_per_forward(url, before),
                        })  # fmt: skip
                ratio = statistics.median(
                    a["requests_per_s"] / b["requests_per_s"] for a, b in zip(runs["batched"], runs["one-at-a-time"])
                )
                for mode in servers:
                    row = {key: statistics.median(run[key] for run in runs[mode]) for key in runs[mode][0]}
                    record = {"model": NAMES[name], "clients": clients, "server": mode, "requests": count, **row}
                    record["ratio_batched_to_one_at_a_time"] = ratio if mode == "batched" else None
                    records.append(record)
                    print(
                        f"{NAMES[name]:>10} {clients:>4} clients  {mode:<14} {row['requests_per_s']:>7.1f} req/s  "
                        f"p50 {row['p50_ms']:>8.1f} ms  p99 {row['p99_ms']:>8.1f} ms  503s {row['refused_503']:>4.0f}  "
                        f"{row['images_per_forward']:>5.1f} img/forward",
                        flush=True,
                    )
        finally:
            for process, _ in servers.values():
                process.terminate()
                process.wait(timeout=60)
    return records


def overload_record(records: list[dict]) -> dict:
    """The batched server at the most clients: how many were refused, and the latency of those accepted."""
    row = max((r for r in records if r["server"] == "batched"), key=lambda r: r["clients"])
    summary = {key: row[key] for key in ("model", "clients", "requests", "refused_503")}
    return {**summary, "max_queue": MAX_QUEUE, "accepted_p50_ms": row["p50_ms"], "accepted_p99_ms": row["p99_ms"]}


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def markdown(results: dict) -> str:
    """The guide's table: one row per model, clients and server."""
    machine = results["machine"]
    lines = [
        f"{machine['cpu']}, {machine['threads']} CPU threads, torch {machine['torch']}; {results['note']}",
        "",
        "| model | clients | server | requests/s | p50 ms | p99 ms | 503s / requests | connections lost "
        "| images per forward | batched / one-at-a-time |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in results["load"]:
        ratio = row["ratio_batched_to_one_at_a_time"]
        lines.append(
            f"| {row['model']} | {row['clients']} | {row['server']} | {row['requests_per_s']:.1f} | "
            f"{row['p50_ms']:.0f} | {row['p99_ms']:.0f} | {row['refused_503']:.0f} / {row['requests']} | "
            f"{row['connection_lost']:.0f} | "
            f"{row['images_per_forward']:.1f} | {'' if ratio is None else f'{ratio:.2f}x'} |"
        )
    return "\n".join(lines) + "\n"


def update_guide(results: dict, guide: Path = GUIDE) -> None:
    """Replace the table between the guide's markers with one generated from ``results``."""
    text = guide.read_text(encoding="utf-8")
    if TABLE_START not in text or TABLE_END not in text:
        raise ValueError(f"{guide} lacks the markers {TABLE_START!r} and {TABLE_END!r} around the load table")
    before, rest = text.split(TABLE_START, 1)
    after = rest.split(TABLE_END, 1)[1]
    guide.write_text(f"{before}{TABLE_START}\n{markdown(results)}{TABLE_END}{after}", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["vit_digits", "vit_tiny_patch16_224"])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32, 128])
    parser.add_argument("--requests", type=int, default=96, help="requests per round and level (at least 2 per client)")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--max-seconds", type=float, default=300, help="time limit of one round")
    parser.add_argument("--shared", action="store_true", help="record that other work shared the machine")
    parser.add_argument("--table-only", action="store_true", help="only regenerate the guide's table from serve.json")
    args = parser.parse_args()
    if args.table_only:
        update_guide(read_json(RESULTS))
        return

    image = jpeg()
    start = time.perf_counter()
    per_model = [
        measure_model(name, args.clients, args.requests, args.rounds, args.max_seconds, image) for name in args.models
    ]
    shared = "the machine was shared with other work, so the figures are noisy; " if args.shared else ""
    results = {
        "description": DESCRIPTION,
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "machine": {"cpu": cpu_name(), "threads": os.cpu_count(), "torch": torch.__version__,
                    "load average at the end": round(os.getloadavg()[0], 1)},
        "run_seconds": time.perf_counter() - start,
        "note": f"{shared}{args.rounds} round(s), medians; --max-queue {MAX_QUEUE}; clients do not retry a 503.",
        "load": [record for records in per_model for record in records],
        "overload": [overload_record(records) for records in per_model],
    }  # fmt: skip
    RESULTS.parent.mkdir(exist_ok=True)
    write_json(results, RESULTS)
    update_guide(results)
    print(f"wrote {RESULTS} and the table of {GUIDE}")


if __name__ == "__main__":
    main()
