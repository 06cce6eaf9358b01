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
        "attention-rollout heat map), GET /health, GET /model, OpenAPI at /docs, and a web page at /. "
        "Concurrent requests share forward passes (up to --max-batch images, waiting at most --max-wait-ms).",
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="run folder (config.json + model.safetensors)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    parser.add_argument("--port", type=int_at_least(0), default=8000, help="port (default: 8000)")
    parser.add_argument(
        "--workers", type=int_at_least(1), default=1, help="server processes, each with its own copy of the model (default: 1)"
    )
    add_fast_argument(parser)
    parser.add_argument("--max-batch", type=int_at_least(1), default=32, help="images per forward pass (default: 32; 1: no batching)")
    parser.add_argument("--max-wait-ms", type=float, default=5.0, help="how long a batch waits for more requests (default: 5)")
    parser.add_argument("--max-files", type=int_at_least(1), default=16, help="images per request (default: 16)")
    parser.add_argument("--max-megabytes", type=float, default=10.0, help="size limit of one image file (default: 10)")
    parser.add_argument("--max-megapixels", type=float, default=40.0, help="pixel limit of one image (default: 40)")
    add_device_argument(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Load the model (so a bad folder fails before binding), then run uvicorn until interrupted."""
    import os
    from pathlib import Path

    import torch
    import uvicorn

    from vitkit.cli.common import load_run_model, pick_cli_device
    from vitkit.serve import ServeSettings, create_app
    from vitkit.serve.app import ENVIRONMENT_VARIABLE, environment_for_workers

    if args.max_megabytes <= 0 or args.max_megapixels <= 0:
        raise ValueError(f"--max-megabytes and --max-megapixels must be > 0, got {args.max_megabytes}, {args.max_megapixels}")
    settings = ServeSettings(
        max_files=args.max_files,
        max_bytes=int(args.max_megabytes * 2**20),
        max_pixels=int(args.max_megapixels * 10**6),
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
    )
    device = pick_cli_device(args.device)
    name = Path(args.run_dir).resolve().name
    app = create_app(load_run_model(args.run_dir, device), name=name, settings=settings, fast=args.fast)
    if not _is_loopback(args.host):
        print(f"warning: listening on {args.host}: every machine that can reach it can use this model", flush=True)
    print(f"serving {name} on http://{args.host}:{args.port}/ (API documentation at /docs); Ctrl-C stops", flush=True)
    if args.workers == 1:
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning" if args.quiet else "info")
        return 0
    del app  # each worker process builds its own from the environment
    threads = max(1, torch.get_num_threads() // args.workers)  # the workers share the cores instead of fighting over them
    os.environ[ENVIRONMENT_VARIABLE] = environment_for_workers(
        Path(args.run_dir).resolve(), name=name, settings=settings, fast=args.fast, device=str(device), threads=threads
    )
    uvicorn.run(
        "vitkit.serve.app:create_app_from_environment",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_level="warning" if args.quiet else "info",
    )
    return 0


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
