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
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch.utils.data import Dataset

import vitkit
from vitkit import training
from vitkit.data import build_folder_eval_data
from vitkit.evaluation import class_names_of, evaluate, normalisation_of, save_confusion_matrix
from vitkit.model.vit import CONFIG_FILE, WEIGHTS_FILE
from vitkit.prediction import predict_files
from vitkit.training import distributed
from vitkit.training.checkpoint import LAST_WEIGHTS
from vitkit.training.config import TRAIN_CONFIG_FILE
from vitkit.training.distributed import DistContext, pick_device

EXIT_FAILED = 1  # the command ran but something failed (a file that could not be predicted, a diverged run)
EXIT_USAGE = 2  # bad input: a wrong flag value, a missing file (argparse uses 2 for its own errors too)


def report_error(message: str) -> None:
    print(f"vitkit: error: {message}", file=sys.stderr)


# --- helpers shared by evaluate and predict -----------------------------------------------------


def load_run_model(run_dir: str | os.PathLike, device: torch.device) -> vitkit.VisionTransformer:
    """The trained model of a run folder (or any save_pretrained folder), with an error that says what is wrong."""
    run_dir = Path(run_dir)
    expected = f"a vitkit run folder holding {CONFIG_FILE} and {WEIGHTS_FILE}, as `vitkit train` writes"
    if not run_dir.exists():
        raise FileNotFoundError(f"run folder not found: {run_dir} (expected {expected})")
    if not run_dir.is_dir():
        raise NotADirectoryError(f"{run_dir} is not a folder (expected {expected})")
    missing = [name for name in (CONFIG_FILE, WEIGHTS_FILE) if not (run_dir / name).is_file()]
    if missing:
        hint = ""
        if (run_dir / LAST_WEIGHTS).is_file():
            hint = f"; the run did not finish: continue it with `vitkit train --resume {run_dir}`"
        raise FileNotFoundError(f"{run_dir} has no {' and no '.join(missing)} (expected {expected}){hint}")
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
    """Train a model, one line per epoch; with --nproc N > 1 the training library starts N processes via torchrun."""
    config = training.config_from_args(args)
    result = training.train(
        config, on_epoch_end=lambda record: print(training.format_epoch_line(record, config.epochs), flush=True)
    )
    ctx = distributed.context_from_env()
    if not ctx.is_main or (config.nproc > 1 and not ctx.distributed):
        return 0  # another process trained and reported (rank 0 of the torchrun that --nproc started)
    best = result.best_val_acc
    print(f"run folder: {result.run_dir}" + (f"  (best val acc {percent(best)})" if best is not None else ""))
    return 0


def evaluation_data(args: argparse.Namespace, model: vitkit.VisionTransformer) -> tuple[Dataset, str]:
    """The data set to evaluate on and its description: --data-dir, else the run's own held-out split."""
    if args.data_dir is not None:
        config = model.config
        dataset = build_folder_eval_data(
            args.data_dir, config.image_size, config.in_channels, *normalisation_of(model), class_names_of(model)
        )
        return dataset, f"image folder {args.data_dir}"
    if not (Path(args.run_dir) / TRAIN_CONFIG_FILE).is_file():
        raise FileNotFoundError(
            f"{args.run_dir} has no {TRAIN_CONFIG_FILE}, so its held-out split is unknown: "
            "pass --data-dir DIR to evaluate on an image folder"
        )
    # The same call, seed and settings as the run itself: the same held-out images.
    bundle = training.build_run_data(training.load_train_config(args.run_dir), channels=model.in_channels)
    return bundle.val, f"{bundle.val_name} split of {bundle.source}"


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Accuracy on the run's held-out split or on --data-dir, plus a confusion-matrix PNG."""
    device = pick_device(args.device, DistContext())
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
    device = pick_device(args.device, DistContext())
    model = load_run_model(args.run_dir, device)
    failed = total = 0
    for result in predict_files(model, args.paths, args.top_k, batch_size=args.batch_size, device=device):
        failed += "error" in result
        total += 1
        print(json.dumps(result), flush=True)
    if failed:
        report_error(f'{failed} of {total} paths could not be predicted (see their "error" lines)')
        return EXIT_FAILED
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    """The named configurations with their sizes and parameter counts (counted on the meta device: no memory)."""
    rows = [("name", "params", "exact", "image", "patch", "dim", "depth", "heads", "channels")]
    for name in vitkit.list_models():
        config = vitkit.get_config(name)
        count = vitkit.count_parameters(name)
        rows.append(
            (
                name,
                format_count(count),
                f"{count:,}",
                "x".join(map(str, config.image_size)),
                "x".join(map(str, config.patch_size)),
                str(config.hidden_dim),
                str(config.depth),
                str(config.num_heads),
                str(config.in_channels),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = [row[0].ljust(widths[0])] + [cell.rjust(width) for cell, width in zip(row[1:], widths[1:])]
        print("  ".join(cells).rstrip())
    return 0


# --- the parser -----------------------------------------------------------------------------------


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device", default="auto", help="auto (the GPU if there is one), cpu, cuda, cuda:1, ... (default: auto)"
    )


def int_at_least(minimum: int) -> Callable[[str], int]:
    """argparse type: a whole number >= minimum, with a message that says so."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected a number >= {minimum}, got {value}")
        return value

    return parse


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
        "--data-dir",
        metavar="DIR",
        help="evaluate on this image folder (DIR/<class>/<images>, or DIR/val/<class>/...) instead of the run's split",
    )
    evaluate.add_argument(
        "--plot",
        metavar="PATH",
        help="where to write the confusion-matrix PNG (default: RUN_DIR/confusion_matrix.png, "
        "or RUN_DIR/confusion_matrix_<folder name>.png with --data-dir)",
    )
    evaluate.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    evaluate.add_argument("--batch-size", type=int_at_least(1), default=256, help="images per batch (default: 256)")
    evaluate.add_argument("--workers", type=int_at_least(0), default=0, help="data-loading processes (default: 0)")
    add_device_argument(evaluate)
    evaluate.set_defaults(func=cmd_evaluate)

    predict = commands.add_parser(
        "predict",
        help="classify image files, one JSON line per image",
        description='Print one JSON line per image: {"path", "top_k": [{"class", "probability"}, ...]}, '
        'or {"path", "error"} for a file that is missing or not a readable image (exit code 1 if any). '
        "Folders are searched recursively for image files.",
    )
    predict.add_argument("run_dir", metavar="RUN_DIR", help="run folder (config.json + model.safetensors)")
    predict.add_argument("paths", metavar="IMAGE_OR_FOLDER", nargs="+", help="image files or folders of images")
    predict.add_argument(
        "--top-k", type=int_at_least(1), default=5, help="classes per image (default: 5; at most the number of classes)"
    )
    predict.add_argument("--batch-size", type=int_at_least(1), default=64, help="images per batch (default: 64)")
    add_device_argument(predict)
    predict.set_defaults(func=cmd_predict)

    models = commands.add_parser(
        "models", help="list the named model configurations", description="List the named models and parameter counts."
    )
    models.set_defaults(func=cmd_models)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `vitkit` console script and of `python -m vitkit`; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    # Under torchrun only rank 0 reports progress; the other processes log warnings and errors only.
    quiet = args.quiet or not distributed.context_from_env().is_main
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(message)s")
    try:
        return args.func(args)
    except (training.NonFiniteLossError, ChildProcessError) as err:  # a run that failed, not a bad input
        message, code = str(err), EXIT_FAILED
    except BrokenPipeError:
        # The reader went away (`vitkit predict ... | head`): stop quietly, as Unix tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED
    except (ValueError, OSError) as err:  # ImageLoadError is a ValueError, FileNotFoundError an OSError
        message, code = str(err), EXIT_USAGE
    except KeyboardInterrupt:
        message, code = "interrupted", 130
    report_error(message)
    return code
