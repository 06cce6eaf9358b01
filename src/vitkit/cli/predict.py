"""`vitkit predict`: classify image files, one JSON line per image."""

from __future__ import annotations

import argparse
import json
import sys

from vitkit.cli.common import (
    EXIT_FAILED,
    add_device_argument,
    add_fast_argument,
    int_at_least,
    load_run_model,
    pick_cli_device,
    report_error,
)


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "predict",
        help="classify image files, one JSON line per image",
        description='Print one JSON line per image: {"path", "top_k": [{"class", "probability"}, ...]}, '
        'or {"path", "error"} for a file that is missing or not a readable image (exit code 1 if any). '
        "Folders are searched recursively for image files.",
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="run folder (config.json + model.safetensors)")
    parser.add_argument(
        "paths", metavar="IMAGE_OR_FOLDER", nargs="+",
        help="image files, folders of images, or WebDataset shards (.tar, patterns, URLs, `vitkit shard` folders)",
    )  # fmt: skip
    parser.add_argument(
        "--top-k", type=int_at_least(1), default=5, help="classes per image (default: 5; at most the number of classes)"
    )
    parser.add_argument("--batch-size", type=int_at_least(1), default=64, help="images per batch (default: 64)")
    add_device_argument(parser)
    add_fast_argument(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """One JSON line per image (stdout), one error line per bad path (stderr); exit code 1 when any failed.

    Results are printed as they come (nothing accumulates), with a progress bar and its rate on a terminal.
    """
    from tqdm.auto import tqdm

    from vitkit.data.augment_config import is_shard_location
    from vitkit.prediction import expand_paths, predict_files

    device = pick_cli_device(args.device)
    model = load_run_model(args.run_dir, device, fast=args.fast)
    failed = total = 0
    # file names only, for the bar's total and time left (unknown for shards, whose samples are counted by reading)
    shards = any(is_shard_location(path) for path in args.paths)
    count = None if shards else sum(1 for _ in expand_paths(args.paths))
    results = predict_files(model, args.paths, args.top_k, batch_size=args.batch_size, device=device)
    for result in tqdm(results, total=count, desc="predicting", unit="img", disable=None, file=sys.stderr, leave=False):
        total += 1
        if "error" in result:
            failed += 1
            report_error(result["error"])
        print(json.dumps(result), flush=True)
    if failed:
        report_error(f'{failed} of {total} paths could not be predicted (see their "error" lines)')
        return EXIT_FAILED
    return 0
