"""`vitkit serve`: an HTTP API and a web page for a run folder's model."""

from __future__ import annotations

import argparse
import ipaddress

from vitkit.cli.common import add_device_argument, add_fast_argument, int_at_least


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "serve",
        help="serve a model over HTTP: a JSON API and a web page",
        description="Serve RUN_DIR's model: POST /predict (multipart images -> top-k JSON; ?explain=1 adds the "
        "attention-rollout heat map), GET /health, GET /model, OpenAPI at /docs, and a web page at /; for load "
        "balancers GET /livez, GET /readyz (200 once the model is warm) and GET /metrics (Prometheus). "
        "Concurrent requests share forward passes (up to --max-batch images, waiting at most --max-wait-ms); beyond "
        "--max-queue waiting images a request gets 503 with Retry-After. SIGTERM finishes the accepted requests "
        "and exits.",
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="run folder (config.json + model.safetensors)")
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)"
    )
    parser.add_argument("--port", type=int_at_least(0), default=8000, help="port (default: 8000)")
    parser.add_argument(
        "--workers",
        type=int_at_least(1),
        default=1,
        help="server processes, each with its own copy of the model (default: 1)",
    )
    add_fast_argument(parser)
    parser.add_argument(
        "--max-batch", type=int_at_least(1), default=32, help="images per forward pass (default: 32; 1: no batching)"
    )
    parser.add_argument(
        "--max-wait-ms", type=float, default=5.0, help="how long a batch waits for more requests (default: 5)"
    )
    parser.add_argument("--max-files", type=int_at_least(1), default=16, help="images per request (default: 16)")
    parser.add_argument("--max-megabytes", type=float, default=10.0, help="size limit of one image file (default: 10)")
    parser.add_argument("--max-megapixels", type=float, default=40.0, help="pixel limit of one image (default: 40)")
    parser.add_argument(
        "--max-queue", type=int_at_least(1), default=256,
        help="images waiting for a forward pass; beyond it a request is refused at once with 503 and "
        "Retry-After (default: 256; at least --max-files)",
    )  # fmt: skip
    parser.add_argument(
        "--timeout-s", type=float, default=60.0, help="how long a request may wait and run before a 504 (default: 60)"
    )
    parser.add_argument(
        "--drain-s", type=float, default=30.0, help="on SIGTERM, how long to finish the accepted requests (default: 30)"
    )
    parser.add_argument(
        "--api-key-file", metavar="FILE",
        help="require 'Authorization: Bearer KEY' with one of FILE's keys (one per line) on every endpoint but "
        "/livez and /readyz",
    )  # fmt: skip
    parser.add_argument(
        "--cors-origin", action="append", default=[], metavar="ORIGIN",
        help="a browser origin (https://example.org) whose pages may call the API; repeat for several (default: none)",
    )  # fmt: skip
    add_device_argument(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Load the model (so a bad folder fails before binding), then run uvicorn until interrupted."""
    import os
    import signal
    import time
    from pathlib import Path

    import torch
    import uvicorn

    from vitkit.cli.common import load_run_model, pick_cli_device
    from vitkit.serve import ServeSettings, create_app
    from vitkit.serve.app import ENVIRONMENT_VARIABLE, environment_for_workers
    from vitkit.serve.auth import read_api_keys

    if args.max_megabytes <= 0 or args.max_megapixels <= 0:
        raise ValueError(
            f"--max-megabytes and --max-megapixels must be > 0, got {args.max_megabytes}, {args.max_megapixels}"
        )
    settings = ServeSettings(
        max_files=args.max_files,
        max_bytes=int(args.max_megabytes * 2**20),
        max_pixels=int(args.max_megapixels * 10**6),
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        max_queue=args.max_queue,
        timeout_s=args.timeout_s,
        drain_s=args.drain_s,
    )
    if args.api_key_file is not None:
        read_api_keys(args.api_key_file)  # a missing or empty key file fails here, before the model loads
    device = pick_cli_device(args.device)
    name = Path(args.run_dir).resolve().name
    start = time.perf_counter()
    model = load_run_model(args.run_dir, device)
    security = {"api_key_file": args.api_key_file, "cors_origins": args.cors_origin}
    app = create_app(
        model, name=name, settings=settings, fast=args.fast, load_seconds=time.perf_counter() - start, **security
    )
    if not _is_loopback(args.host) and args.api_key_file is None:
        print(
            f"warning: listening on {args.host} without an API key: every machine that can reach it can use this "
            "model. Put one or more keys in a file (one per line, e.g. `openssl rand -hex 32 > keys.txt`) and pass "
            "--api-key-file keys.txt; clients then send 'Authorization: Bearer KEY'",
            flush=True,
        )
    print(f"serving {name} on http://{args.host}:{args.port}/ (API documentation at /docs); Ctrl-C stops", flush=True)
    server_options = {
        "host": args.host, "port": args.port, "log_level": "warning" if args.quiet else "info",
        "timeout_graceful_shutdown": args.drain_s,
    }  # fmt: skip
    # uvicorn drains on SIGTERM, then hands the signal to the handler it found: that one ends the command with 0.
    previous = signal.signal(signal.SIGTERM, _stopped_by_sigterm)
    try:
        if args.workers == 1:
            uvicorn.run(app, **server_options)
        else:
            del app  # each worker process builds its own from the environment
            # The workers share the cores instead of fighting over them.
            threads = max(1, torch.get_num_threads() // args.workers)
            os.environ[ENVIRONMENT_VARIABLE] = environment_for_workers(
                Path(args.run_dir).resolve(), name=name, settings=settings, fast=args.fast, device=str(device),
                threads=threads, **security,
            )  # fmt: skip
            factory = "vitkit.serve.app:create_app_from_environment"
            uvicorn.run(factory, factory=True, workers=args.workers, **server_options)
    except StoppedBySigterm:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0


class StoppedBySigterm(Exception):
    """SIGTERM stopped the server after it finished the requests it had accepted: a clean stop."""


def _stopped_by_sigterm(signum: int, frame: object) -> None:
    raise StoppedBySigterm


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
