"""Which map to trust on which model: deletion and insertion AUC of every map against a random patch order.

For each model (a digits model trained with the default `vitkit train`; with ``--shapes``, a ViT-Ti/16 trained on
a photo-like folder that benchmarks/make_shapes_folder.py draws), on its held-out split: the mean deletion and
insertion AUC of the random order, the last block's attention, attention rollout, Grad-CAM and transformer
attribution, and each map's gain over the random order with its standard error (paired, over the images; the
random order is the mean of four permutations per image). Baselines: "rise" (deletion to the data's mean colour,
insertion from the blurred image, the default of `vitkit explain`), then "blur" and "mean" for both curves. The
model-free patch contrast (each patch's distance from the mean colour that deletion puts in its place) is among the
maps: what a map gains over it is what it knows of the model beyond the image. The same architecture with
random weights is scored too, ``--random-inits`` initialisations on the first ``--random-init-images`` images: a
faithful score must not credit a map of an untrained model, and the spread of a map's gain across initialisations
is the noise it is judged against. Writes benchmarks/results/faithfulness.json; the docs' tables are generated
from it.

    python benchmarks/faithfulness.py [--digits-run RUN] [--shapes [--shapes-run RUN]] [--no-digits] [--max-images 400]
                                      [--random-inits 5] [--random-init-images 120]

The rows of models not scored in a run (``--no-digits``, or no ``--shapes``) are kept from the existing file.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

from vitkit import VisionTransformer, training
from vitkit.explain.faithfulness import BASELINES, RANDOM_ORDER, compare_methods

RESULTS = Path(__file__).parent / "results" / "faithfulness.json"
RANDOM_ORDERS = 4  # permutations per image averaged into the random order's curves: a less noisy yardstick
SHAPES_PER_CLASS = 300
# Random crops keep most of the image (--crop-scale-min 0.8): the class is one object somewhere in it, which a
# tighter crop often cuts away, training the model on a label its input no longer shows.
SHAPES_TRAINING = ["--model", "vit_tiny_patch16_224", "--image-size", "64", "--val-fraction", "0.15",
                   "--epochs", "20", "--warmup-epochs", "1", "--batch-size", "32",
                   "--crop-scale-min", "0.8"]  # fmt: skip


def train(out: Path, flags: list[str]) -> Path:
    """A run of `vitkit train` with ``flags`` in a fresh process, unless ``out`` already holds its weights."""
    if not (out / "model.safetensors").is_file():
        subprocess.run(
            [sys.executable, "-m", "vitkit", "train", "--out", str(out), "--no-progress", *flags], check=True
        )
    return out


def held_out_images(run: Path, model: VisionTransformer, limit: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``limit`` images of the run's held-out split and their labels, rebuilt from its train_config.json."""
    bundle = training.build_run_data(
        training.load_train_config(run), channels=model.in_channels, preprocessing=model.config
    )
    samples = [bundle.val[i] for i in range(min(limit, len(bundle.val)))]
    return torch.stack([image for image, _ in samples]), torch.tensor([int(label) for _, label in samples])


AVERAGED_FIELDS = ("deletion_auc", "insertion_auc", "deletion_gain", "insertion_gain", "probability_whole",
               "probability_all_deleted", "probability_insertion_start")  # fmt: skip


def score(model: VisionTransformer, images: torch.Tensor, label: str, weights: str, baseline: str) -> list[dict]:
    """One row per map: mean AUCs over the images and the paired gain over the random order (mean, standard error),
    and the explained class's probability on the whole image, with every patch deleted and where insertion starts."""
    curves = compare_methods(model, images, baseline=baseline, random_orders=RANDOM_ORDERS)
    random = curves[RANDOM_ORDER]
    rows = []
    for name, c in curves.items():
        deletion_gain = random.deletion_auc - c.deletion_auc
        insertion_gain = c.insertion_auc - random.insertion_auc
        n = len(images)
        rows.append({
            "model": label, "weights": weights, "baseline": baseline, "map": name, "images": n,
            "deletion_auc": round(c.deletion_auc.mean().item(), 4),
            "insertion_auc": round(c.insertion_auc.mean().item(), 4),
            "deletion_gain": round(deletion_gain.mean().item(), 4),
            "deletion_gain_se": round((deletion_gain.std() / n**0.5).item(), 4) if name != RANDOM_ORDER else 0.0,
            "insertion_gain": round(insertion_gain.mean().item(), 4),
            "insertion_gain_se": round((insertion_gain.std() / n**0.5).item(), 4) if name != RANDOM_ORDER else 0.0,
            "probability_whole": round(c.deletion[:, 0].mean().item(), 4),
            "probability_all_deleted": round(c.deletion[:, -1].mean().item(), 4),
            "probability_insertion_start": round(c.insertion[:, 0].mean().item(), 4),
        })  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    return rows


def across_inits(per_init: list[list[dict]], weights: str) -> list[dict]:
    """One row per map from the rows of several random initialisations: the mean of each figure over them, and as
    the gains' standard error the spread of the gains across the initialisations (standard deviation / sqrt(n))."""
    rows = []
    for same_map in zip(*per_init):
        gains = {kind: torch.tensor([row[f"{kind}_gain"] for row in same_map]) for kind in ("deletion", "insertion")}
        inits = len(same_map)
        row = {**same_map[0], "weights": weights, "inits": inits}
        row.update({field: round(sum(r[field] for r in same_map) / inits, 4) for field in AVERAGED_FIELDS})
        row.update({f"{kind}_gain_se": round((g.std() / inits**0.5).item(), 4) for kind, g in gains.items()})
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("runs/faithfulness"), help="folder for the runs")
    parser.add_argument("--digits-run", type=Path, help="a digits run of the default `vitkit train` to reuse")
    parser.add_argument("--no-digits", action="store_true", help="leave the digits model's rows as they are")
    parser.add_argument("--shapes", action="store_true", help="also train and score ViT-Ti/16 on the shapes folder")
    parser.add_argument("--shapes-run", type=Path, help="a shapes run to reuse")
    parser.add_argument("--max-images", type=int, default=400, help="held-out images per model (default: 400)")
    parser.add_argument("--random-inits", type=int, default=5, help="random initialisations per model (default: 5)")
    parser.add_argument(
        "--random-init-images",
        type=int,
        default=120,
        help="held-out images each random initialisation is scored on (default: 120)",
    )
    parser.add_argument("--baselines", nargs="+", default=list(BASELINES), choices=BASELINES)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    start = time.perf_counter()
    command = "python benchmarks/faithfulness.py " + " ".join(sys.argv[1:])
    runs = []
    if not args.no_digits:
        runs.append(
            (
                "vit_digits_stem on the digits (default `vitkit train`)",
                args.digits_run or train(args.work / "digits", []),
            )
        )
    if args.shapes:
        if args.shapes_run is None:
            from make_shapes_folder import write_folder

            folder = args.work / "shapes"
            if not folder.is_dir():
                write_folder(folder / "train", size=64, per_class=SHAPES_PER_CLASS, seed=0)
        shapes = args.shapes_run or train(args.work / "shapes-run", ["--data-dir", str(folder), *SHAPES_TRAINING])
        runs.append(("ViT-Ti/16 at 64 px on the shapes folder", shapes))
    models: list[dict] = []
    rows: list[dict] = []
    init_rows: list[dict] = []
    for label, run in runs:
        model = VisionTransformer.from_pretrained(run).eval()
        images, labels = held_out_images(run, model, args.max_images)
        with torch.no_grad():
            predictions = torch.cat([model(part).argmax(dim=1) for part in images.split(64)])
        models.append({"model": label, "run": str(run), "held_out_images": len(images),
                       "held_out_accuracy": round((predictions == labels).float().mean().item(), 4),
                       "command": command})  # fmt: skip
        print(json.dumps(models[-1]), flush=True)
        for baseline in args.baselines:
            rows += score(model, images, label, "trained", baseline)
        per_init = []
        for seed in range(args.random_inits):
            torch.manual_seed(seed)
            untrained = VisionTransformer(model.config).eval()  # the same architecture, random weights
            scored_init = score(untrained, images[: args.random_init_images], label, f"random init {seed}",
                                args.baselines[0])  # fmt: skip
            init_rows += [{**row, "init_seed": seed} for row in scored_init]
            per_init.append(scored_init)
        rows += across_inits(per_init, "random init")
    # Read at the end, so that runs scoring other models into the same file at the same time keep each other's rows.
    scored = {label for label, _ in runs}
    kept = json.loads(args.out.read_text()) if args.out.is_file() else {}
    models = [row for row in kept.get("models", []) if row["model"] not in scored] + models
    rows = [row for row in kept.get("results", []) if row["model"] not in scored] + rows
    init_rows = [row for row in kept.get("random_inits", []) if row["model"] not in scored] + init_rows
    record = {
        "description": "Deletion AUC (lower is better) and insertion AUC (higher is better) of each map on the "
        "held-out split, against a random patch order (the mean of four permutations per image); gains are over "
        "the random order, paired per image, with their standard error. Baseline `rise`: deletion to the data's "
        "mean colour, insertion from the blurred image; `blur` and `mean`: that baseline for both curves. "
        "probability_*: the explained (predicted) class's mean probability on the whole image, with every patch "
        "deleted, and where insertion starts. `patch contrast (model-free)` ranks the patches by their distance "
        "from the data's mean colour, the image alone. `random init` is the same architecture with untrained "
        "weights: the mean over `inits` initialisations (torch.manual_seed 0, 1, ...), each scored on the first "
        "`images` held-out images, its gains' standard error taken across the initialisations; `random_inits` "
        "holds each initialisation's rows, their standard errors over the images. `models` holds each model's "
        "run, held-out accuracy and the command that scored it.",
        "command": command,
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(),
            "note": "shared with other jobs",
        },  # fmt: skip
        "run_seconds": round(time.perf_counter() - start, 1),
        "models": models,
        "results": rows,
        "random_inits": init_rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))  # make_shapes_folder.py sits beside this file
    main()
