"""`vitkit evaluate`: accuracy of a trained run, per class, and a confusion-matrix PNG."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from vitkit.cli.common import (
    add_device_argument,
    add_fast_argument,
    int_at_least,
    load_run_model,
    percent,
    pick_cli_device,
    run_held_out_split,
)

if TYPE_CHECKING:
    from torch.utils.data import Dataset

    from vitkit.model import VisionTransformer


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "evaluate",
        help="accuracy of a trained run: top-1, top-5, per class, confusion matrix",
        description="Evaluate a run on its own held-out split (rebuilt from train_config.json with the same seed) "
        "or on an image folder, and write a confusion-matrix PNG.",
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="run folder (config.json + model.safetensors)")
    parser.add_argument(
        "--data-dir",
        metavar="DIR",
        help="evaluate on this image folder (DIR/<class>/<images>, or DIR/val/<class>/...) or these WebDataset shards "
        "(a `vitkit shard` folder: its val shards; .tar paths, patterns, URLs) instead of the run's split",
    )
    parser.add_argument(
        "--plot",
        metavar="PATH",
        help="where to write the confusion-matrix PNG (default: RUN_DIR/confusion_matrix.png, "
        "or RUN_DIR/confusion_matrix_<folder name>.png with --data-dir)",
    )
    parser.add_argument(
        "--skip-bad-files",
        action="store_true",
        help="leave out files that are not readable images (reporting how many) instead of failing before starting",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.add_argument("--batch-size", type=int_at_least(1), default=256, help="images per batch (default: 256)")
    parser.add_argument("--workers", type=int_at_least(0), default=0, help="data-loading processes (default: 0)")
    add_device_argument(parser)
    add_fast_argument(parser)
    parser.set_defaults(func=run)


def evaluation_data(args: argparse.Namespace, model: VisionTransformer) -> tuple[Dataset, str]:
    """The data set to evaluate on and its description: --data-dir, else the run's own held-out split."""
    from vitkit.data import build_folder_eval_data

    if args.data_dir is not None:
        from vitkit.data.augment_config import is_shard_location

        dataset = build_folder_eval_data(
            args.data_dir, model.config, skip_bad_files=args.skip_bad_files, workers=args.workers
        )
        return dataset, f"{'shards' if is_shard_location(args.data_dir) else 'image folder'} {args.data_dir}"
    instead = "pass --data-dir DIR to evaluate on an image folder"
    return run_held_out_split(args.run_dir, model, instead, skip_bad_files=args.skip_bad_files)


def run(args: argparse.Namespace) -> int:
    """Accuracy on the run's held-out split or on --data-dir, plus a confusion-matrix PNG."""
    from vitkit.evaluation import evaluate, save_confusion_matrix

    device = pick_cli_device(args.device)
    model = load_run_model(args.run_dir, device, fast=args.fast)
    dataset, description = evaluation_data(args, model)
    metrics = evaluate(model, dataset, batch_size=args.batch_size, workers=args.workers, device=device, progress=True)
    if args.plot is not None:
        plot = Path(args.plot)
    elif args.data_dir is not None:
        plot = Path(args.run_dir) / f"confusion_matrix_{Path(args.data_dir).resolve().name}.png"
    else:
        plot = Path(args.run_dir) / "confusion_matrix.png"
    save_confusion_matrix(
        metrics["confusion_matrix"], metrics["class_names"], plot, title=f"{Path(args.run_dir).name}: {description}"
    )
    if args.json:
        print(json.dumps({"run_dir": str(args.run_dir), "data": description, **metrics, "plot": str(plot)}))
        return 0
    support = [sum(row) for row in metrics["confusion_matrix"]]
    width = max(len(name) for name in metrics["class_names"])
    print(f"evaluated {args.run_dir} on the {description}: {metrics['num_samples']} images")
    print(f"top-1 accuracy: {percent(metrics['top1'])}")
    if len(metrics["class_names"]) > 5:  # with 5 classes or fewer, every label is among the best 5
        print(f"top-5 accuracy: {percent(metrics['top5'])}")
    print("per-class accuracy:")
    for (name, accuracy), count in zip(metrics["per_class"].items(), support):
        print(f"  {name:<{width}}  {percent(accuracy):>8}  ({count} images)")
    print(f"confusion matrix: {plot}")
    return 0
