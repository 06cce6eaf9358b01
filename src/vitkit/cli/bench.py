"""`vitkit bench`: images/s beside timm, transformers, torchvision and vit-pytorch, in one process."""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from vitkit.cli.common import int_at_least

if TYPE_CHECKING:
    from vitkit.bench.report import Comparison

DEFAULT_MODELS = ("vit_small_patch16_224", "vit_base_patch16_224")
SCALING_MODEL = "vit_small_patch16_224"  # at larger images and in the training step, beside timm
PEERS = ("timm", "transformers", "torchvision", "vit-pytorch")  # vitkit.bench.peers.FP32_PEERS, without importing torch


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "bench",
        help="inference and training speed beside the peer libraries (table + JSON)",
        description="Time vitkit against timm, transformers, torchvision and vit-pytorch (those installed: "
        "pip install 'vitkit[bench]') on the same inputs in one process, rounds interleaved; images/s is the "
        "median over rounds. Also: ViT-S/16 at larger images beside timm, and a training step beside timm.",
    )
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), help="registered model names")
    parser.add_argument("--batch-sizes", nargs="+", type=int_at_least(1), default=[1, 16], help="default: 1 16")
    parser.add_argument("--rounds", type=int_at_least(1), default=3, help="timed rounds (default: 3)")
    parser.add_argument("--threads", type=int_at_least(1), help="torch and ONNX Runtime threads (default: torch's)")
    parser.add_argument(
        "--peers", nargs="*", choices=PEERS, default=list(PEERS), help="peer libraries to time (default: all installed)"
    )
    parser.add_argument(
        "--fast", action="store_true", help="also time vitkit.optimize(model) and ONNX Runtime int8 of the same model"
    )
    parser.add_argument(
        "--scaling-sizes", nargs="*", type=int_at_least(16), default=[224, 384, 512],
        help="image sizes for ViT-S/16 beside timm, batch 1 (default: 224 384 512; none to skip)",
    )  # fmt: skip
    parser.add_argument(
        "--train-batch-size",
        type=int_at_least(0),
        default=32,
        help="ViT-S/16 training step batch (0 skips; default 32)",
    )
    parser.add_argument("--no-memory", action="store_true", help="skip peak memory (a fresh process per model)")
    parser.add_argument(
        "--quick", action="store_true", help="a short run: at most 2 rounds, no memory, no scaling, no training"
    )
    parser.add_argument(
        "--json", metavar="PATH", default="bench.json", help="where to write results (default: bench.json)"
    )
    data = parser.add_argument_group(
        "data loading (--data-dir: instead of the models, how fast an image folder feeds training)"
    )
    data.add_argument("--data-dir", metavar="DIR", help="image folder (DIR/train/<class>/... or DIR/<class>/...)")
    data.add_argument("--workers", type=int_at_least(0), default=2, help="data-loading processes (default: 2)")
    data.add_argument("--image-size", type=int_at_least(8), default=224, help="training image size (default: 224)")
    parser.set_defaults(func=run)


def inference_comparisons(args: argparse.Namespace, memory: bool) -> Iterator[Comparison]:
    """Every model of ``--models`` beside the peers, at 224 and each of ``--batch-sizes``."""
    from vitkit.bench import compare_inference

    labels = ["vitkit", "vitkit exact", *(["vitkit fast", "onnxruntime int8"] if args.fast else []), *args.peers]
    for name in args.models:
        yield from compare_inference(name, 224, args.batch_sizes, labels, args.rounds, memory)


def scaling_comparisons(args: argparse.Namespace, memory: bool, measured: list[Comparison]) -> Iterator[Comparison]:
    """ViT-S/16 at each of ``--scaling-sizes``, batch 1, beside timm; a size in ``measured`` already is reused."""
    from vitkit.bench import compare_inference, with_peer_ratios

    labels = ["vitkit", *(["vitkit fast"] if args.fast else []), *(["timm"] if "timm" in args.peers else [])]
    for size in args.scaling_sizes:
        key = (SCALING_MODEL, size, 1)
        found = next((c for c in measured if (c.model, c.image_size, c.batch_size) == key), None)
        if found is not None:  # ViT-S/16 at 224, batch 1, is in the main table already
            yield with_peer_ratios(found, labels)
            continue
        yield from compare_inference(SCALING_MODEL, size, [1], labels, args.rounds, memory)


def training_comparisons(args: argparse.Namespace, memory: bool) -> Iterator[Comparison]:
    """A ViT-S/16 training step of ``--train-batch-size`` images beside timm (none when it is 0)."""
    from vitkit.bench import compare_training

    if args.train_batch_size:
        yield compare_training(SCALING_MODEL, args.train_batch_size, args.rounds, memory)


def run_data_loading(args: argparse.Namespace) -> int:
    """`vitkit bench --data-dir DIR`: start-up seconds and training-input images/s beside timm's loader."""
    from vitkit.bench.data_loading import compare_training_input, startup_seconds
    from vitkit.io import write_json

    startup = startup_seconds(args.data_dir, args.workers, args.image_size)
    print(f"start-up of {args.data_dir} ({startup['files']:,} files, {args.workers} worker processes): scan "
          f"{startup['scan_s']:.2f} s, check {startup['check_s']:.2f} s (with the index: "
          f"{startup['check_with_index_s']:.2f} s), statistics {startup['statistics_s']:.2f} s (then kept in the "
          "index)")  # fmt: skip
    comparison = compare_training_input(args.data_dir, args.workers, args.image_size, rounds=args.rounds)
    print(
        f"\ntraining input at {args.image_size}px, random resized crop + flip + normalise, batch "
        f"{comparison['batch_size']}, {args.workers} workers ({comparison['rounds']} interleaved rounds)"
    )
    print(f"  {'loader':24s} {'images/s':>9s} {'vs timm':>8s}")
    for row in comparison["rows"]:
        ratio = "-" if row["ratio_to_timm"] is None else f"{row['ratio_to_timm']:.2f}"
        print(f"  {row['label']:24s} {row['images_per_s']:9.1f} {ratio:>7s}x")
    write_json({"machine": {"cpu": _cpu_name(), "cpus": os.cpu_count()}, "startup": startup,
                "training_input": comparison}, Path(args.json))  # fmt: skip
    print(f"\nresults: {args.json}")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.data_dir is not None:
        return run_data_loading(args)
    import torch

    from vitkit.bench import format_table
    from vitkit.io import write_json

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.rounds, args.no_memory, args.scaling_sizes, args.train_batch_size = min(args.rounds, 2), True, [], 0
    memory = not args.no_memory
    start = time.perf_counter()
    comparisons: list[Comparison] = []
    sections = (
        inference_comparisons(args, memory),
        scaling_comparisons(args, memory, comparisons),
        training_comparisons(args, memory),
    )
    for comparison in itertools.chain(*sections):  # each printed as soon as it is measured
        print("\n" + format_table(comparison))
        print(f"  ({time.perf_counter() - start:.0f} s into the run)")
        comparisons.append(comparison)
    machine = {"cpu": _cpu_name(), "threads": torch.get_num_threads(), "torch": torch.__version__,
               "python": platform.python_version()}  # fmt: skip
    seconds = time.perf_counter() - start
    results = {"machine": machine, "run_seconds": seconds, "comparisons": [c.to_dict() for c in comparisons]}
    write_json(results, Path(args.json))
    print(f"\nresults: {args.json} ({machine['cpu']}; the run took {seconds / 60:.1f} min)")
    return 0


def _cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what platform knows."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()
