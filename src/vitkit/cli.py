"""The `vitkit` command: train, evaluate, predict, models.

The only module that prints. Library errors (bad input, missing files, unreadable images, a diverged
run) become one `vitkit: error: ...` line on stderr and a non-zero exit code, not a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

import vitkit
from vitkit.model.vit import CONFIG_FILE, WEIGHTS_FILE

logger = logging.getLogger(__name__)

EXIT_FAILED = 1  # the command ran but something failed (a file that could not be predicted, a diverged run)
EXIT_USAGE = 2  # bad input: a wrong flag value, a missing file (argparse uses 2 for its own errors too)


class CommandError(Exception):
    """A failure already reported to the user; carries the exit code."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code


# --- helpers shared by evaluate and predict -----------------------------------------------------


def pick_device(name: str) -> torch.device:
    """'auto' means the GPU when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"unknown device {name!r} (expected auto, cpu, cuda, cuda:1, ...): {err}") from err


def load_run_model(run_dir: str | os.PathLike, device: torch.device) -> vitkit.VisionTransformer:
    """The trained model of a run folder (or any save_pretrained folder), with an error that says what is wrong."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise FileNotFoundError(
            f"run folder not found: {run_dir} (expected a folder written by `vitkit train`, "
            f"holding {CONFIG_FILE} and {WEIGHTS_FILE})"
        )
    if not run_dir.is_dir():
        raise ValueError(f"{run_dir} is not a folder: expected a vitkit run folder holding {CONFIG_FILE} and {WEIGHTS_FILE}")
    missing = [name for name in (CONFIG_FILE, WEIGHTS_FILE) if not (run_dir / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{run_dir} is not a vitkit run folder: it has no {' and no '.join(missing)} "
            f"(expected {CONFIG_FILE} and {WEIGHTS_FILE}, as written by `vitkit train` or save_pretrained)"
        )
    return vitkit.VisionTransformer.from_pretrained(run_dir).to(device).eval()


def format_count(n: int) -> str:
    """86567656 -> '86.6M': parameter counts as papers quote them."""
    for unit, scale in (("B", 10**9), ("M", 10**6), ("K", 10**3)):
        if n >= scale:
            return f"{n / scale:.1f}{unit}"
    return str(n)


def percent(fraction: float | None) -> str:
    return "n/a" if fraction is None else f"{100 * fraction:.2f}%"


# --- subcommands --------------------------------------------------------------------------------


def cmd_train(args: argparse.Namespace) -> int:
    """Train a model; with --nproc N > 1 start N processes through torchrun instead."""
    from vitkit import training

    config = training.config_from_args(args)
    result = training.train(config)
    print(f"run folder: {result.run_dir}")
    return 0


def evaluation_data(args: argparse.Namespace, model: vitkit.VisionTransformer) -> tuple[Any, str]:
    """The data set to evaluate on and a description of it: --data-dir, else the run's own held-out split."""
    from vitkit import data

    config = model.config
    if args.data_dir is not None:
        dataset = data.build_folder_eval_data(
            args.data_dir, config.image_size, config.in_channels, config.mean, config.std, config.class_names
        )
        return dataset, f"image folder {args.data_dir}"
    from vitkit import training

    train_config = training.load_train_config(args.run_dir)
    bundle = data.build_data(
        train_config.dataset,
        data_dir=train_config.data_dir,
        image_size=config.image_size,
        val_fraction=train_config.val_fraction,
        seed=train_config.seed,
        channels=config.in_channels,
    )
    return bundle.val, f"{bundle.val_name} split of {bundle.source}"


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Accuracy on the run's held-out split or on --data-dir, plus a confusion-matrix PNG."""
    from vitkit.evaluation import evaluate, save_confusion_matrix

    device = pick_device(args.device)
    model = load_run_model(args.run_dir, device)
    dataset, description = evaluation_data(args, model)
    metrics = evaluate(model, dataset, batch_size=args.batch_size, workers=args.workers, device=device)
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
    print(f"top-5 accuracy: {percent(metrics['top5'])}")
    print("per-class accuracy:")
    for (name, accuracy), count in zip(metrics["per_class"].items(), support):
        print(f"  {name:<{width}}  {percent(accuracy):>8}  ({count} images)")
    print(f"confusion matrix: {plot}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    """One JSON line per image; exit code 1 when any file could not be predicted."""
    from vitkit.prediction import predict_files

    device = pick_device(args.device)
    model = load_run_model(args.run_dir, device)
    failed = 0
    for result in predict_files(model, args.paths, args.top_k, batch_size=args.batch_size, device=device):
        failed += "error" in result
        print(json.dumps(result), flush=True)
    if failed:
        raise CommandError(f"{failed} file(s) could not be predicted (see their \"error\" lines)", EXIT_FAILED)
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    """The named configurations with their sizes and parameter counts (counted on the meta device: no memory)."""
    rows = [("name", "params", "exact", "image", "patch", "dim", "depth", "heads", "channels")]
    for name in vitkit.list_models():
        config = vitkit.get_config(name)
        count = vitkit.count_parameters(name)
        rows.append((
            name,
            format_count(count),
            f"{count:,}",
            "x".join(map(str, config.image_size)),
            "x".join(map(str, config.patch_size)),
            str(config.hidden_dim),
            str(config.depth),
            str(config.num_heads),
            str(config.in_channels),
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = [row[0].ljust(widths[0])] + [cell.rjust(width) for cell, width in zip(row[1:], widths[1:])]
        print("  ".join(cells).rstrip())
    return 0


# --- the parser -----------------------------------------------------------------------------------


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="auto (GPU if there is one), cpu, cuda, cuda:1, ... (default: auto)")


def positive_int(text: str) -> int:
    """argparse type: an int >= 1, with a message that says so."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The `vitkit` argument parser with its four subcommands."""
    parser = argparse.ArgumentParser(
        prog="vitkit",
        description="Train, evaluate and use Vision Transformers.",
        epilog="Run `vitkit COMMAND --help` for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"vitkit {vitkit.__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="log warnings and errors only")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    from vitkit import training

    train = commands.add_parser(
        "train",
        help="train a model (default: vit_digits on the built-in digits data set)",
        description="Train a Vision Transformer. With no arguments: vit_digits on scikit-learn's 8x8 digits.",
    )
    training.add_train_arguments(train)
    train.set_defaults(func=cmd_train)

    evaluate = commands.add_parser(
        "evaluate",
        help="accuracy of a trained run: top-1, top-5, per class, confusion matrix",
        description="Evaluate a run on its own held-out split (rebuilt from train_config.json with the same seed) "
        "or on an image folder, and write a confusion-matrix PNG.",
    )
    evaluate.add_argument("run_dir", metavar="RUN_DIR", help="run folder (config.json + model.safetensors)")
    evaluate.add_argument(
        "--data-dir", metavar="DIR", help="evaluate on this image folder (DIR/<class>/*.png ...) instead of the run's split"
    )
    evaluate.add_argument(
        "--plot",
        metavar="PATH",
        help="where to write the confusion-matrix PNG (default: RUN_DIR/confusion_matrix.png, "
        "or RUN_DIR/confusion_matrix_<folder name>.png with --data-dir)",
    )
    evaluate.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    evaluate.add_argument("--batch-size", type=positive_int, default=256, help="images per batch (default: 256)")
    evaluate.add_argument("--workers", type=int, default=0, help="data-loading processes (default: 0)")
    add_device_argument(evaluate)
    evaluate.set_defaults(func=cmd_evaluate)

    predict = commands.add_parser(
        "predict",
        help="classify image files, one JSON line per image",
        description="Print one JSON line per image: {\"path\", \"top_k\": [{\"class\", \"probability\"}, ...]}, "
        "or {\"path\", \"error\"} for a file that is missing or not a readable image (exit code 1 if any). "
        "Folders are searched recursively for image files.",
    )
    predict.add_argument("run_dir", metavar="RUN_DIR", help="run folder (config.json + model.safetensors)")
    predict.add_argument("paths", metavar="IMAGE_OR_FOLDER", nargs="+", help="image files or folders of images")
    predict.add_argument(
        "--top-k", type=positive_int, default=5, help="classes to show per image (default: 5, at most the number of classes)"
    )
    predict.add_argument("--batch-size", type=positive_int, default=64, help="images per batch (default: 64)")
    add_device_argument(predict)
    predict.set_defaults(func=cmd_predict)

    models = commands.add_parser(
        "models", help="list the named model configurations", description="List the named configurations with parameter counts."
    )
    models.set_defaults(func=cmd_models)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `vitkit` console script and of `python -m vitkit`; returns the exit code."""
    from vitkit.training import NonFiniteLossError

    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    try:
        return args.func(args)
    except CommandError as err:
        message, code = str(err), err.code
    except NonFiniteLossError as err:
        message, code = str(err), EXIT_FAILED
    except (ValueError, OSError) as err:  # ImageLoadError is a ValueError, FileNotFoundError an OSError
        message, code = str(err), EXIT_USAGE
    except KeyboardInterrupt:
        message, code = "interrupted", 130
    print(f"vitkit: error: {message}", file=sys.stderr)
    return code
