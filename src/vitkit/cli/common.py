"""What the subcommands share: error reporting, loading a run's model, argument types, number formats."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch and the model load only when a command runs, so `vitkit --help` starts fast
    import torch
    from torch.utils.data import Dataset

    from vitkit.model import VisionTransformer

EXIT_FAILED = 1  # the command ran but something failed (a file that could not be predicted, a diverged run)
EXIT_USAGE = 2  # bad input: a wrong flag value, a missing file (argparse uses 2 for its own errors too)


def report_error(message: str) -> None:
    """One `vitkit: error: ...` line on stderr (through tqdm, so that it does not break a progress bar)."""
    from tqdm import tqdm

    tqdm.write(f"vitkit: error: {message}", file=sys.stderr)


def load_run_model(run_dir: str | os.PathLike, device: torch.device, fast: bool = False) -> VisionTransformer:
    """The trained model of a run folder (or any save_pretrained folder), with an error that says what is wrong.

    ``fast`` passes it through ``vitkit.optimize`` (the `--fast` flag).
    """
    from vitkit.model import VisionTransformer
    from vitkit.model.weights import CONFIG_FILE, WEIGHTS_FILE, find_weights

    run_dir = Path(run_dir)
    expected = f"a vitkit run folder holding {CONFIG_FILE} and {WEIGHTS_FILE}, as `vitkit train` writes"
    if not run_dir.exists():
        raise FileNotFoundError(f"run folder not found: {run_dir} (expected {expected})")
    if not run_dir.is_dir():
        raise NotADirectoryError(f"{run_dir} is not a folder (expected {expected})")
    weights, config = find_weights(run_dir)
    if config is None:
        raise FileNotFoundError(f"{run_dir} has no {CONFIG_FILE} beside {weights.name} (expected {expected})")
    model = VisionTransformer.from_pretrained(weights).to(device).eval()
    if fast:
        from vitkit.optimize import optimize

        return optimize(model)
    return model


def run_held_out_split(
    run_dir: str | os.PathLike, model: VisionTransformer, instead: str, skip_bad_files: bool = False
) -> tuple[Dataset, str]:
    """A run's held-out split, rebuilt from its train_config.json with the same seed, and its description.

    ``instead`` tells the user what to give when the run folder has no train_config.json.
    """
    from vitkit import training
    from vitkit.training.config import TRAIN_CONFIG_FILE

    if not (Path(run_dir) / TRAIN_CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{run_dir} has no {TRAIN_CONFIG_FILE}, so its held-out split is unknown: {instead}")
    # The same call, seed and settings as the run itself: the same held-out images, prepared as the model expects
    # (a fine-tuned model keeps its source's normalisation, not the data's).
    train_config = training.load_train_config(run_dir)
    if skip_bad_files:
        train_config = train_config.replace(skip_bad_files=True)
    bundle = training.build_run_data(train_config, channels=model.in_channels, preprocessing=model.config)
    return bundle.val, f"{bundle.val_name} split of {bundle.source}"


def format_count(n: int) -> str:
    """86567656 -> '86.6M': parameter counts as papers quote them."""
    for unit, scale in (("B", 10**9), ("M", 10**6), ("K", 10**3)):
        if n >= scale:
            return f"{n / scale:.1f}{unit}"
    return str(n)


def percent(fraction: float | None) -> str:
    return "n/a" if fraction is None else f"{100 * fraction:.2f}%"


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device", default="auto", help="auto (the GPU if there is one), cpu, cuda, cuda:1, ... (default: auto)"
    )


def add_fast_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--fast",
        action="store_true",
        help="run through vitkit.optimize (fused q/k/v, int8 on the CPU, token merging from ViT-B/16's size up): "
        "faster; top-1 agrees with float32 on >= 99%% of images",
    )


def pick_cli_device(name: str) -> torch.device:
    """The device a single-process command (evaluate, predict, ...) runs on."""
    from vitkit.training.distributed import DistContext, pick_device

    return pick_device(name, DistContext())


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


def number_where(accept: Callable[[float], bool], expected: str) -> Callable[[str], float]:
    """argparse type: a number that ``accept`` takes, with a message that says what was ``expected``."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not accept(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {value}")
        return value

    return parse


fraction = number_where(lambda value: 0.0 <= value < 1.0, "a number in [0, 1)")  # a share of patches, of weights
positive_number = number_where(lambda value: value > 0, "a number > 0")
