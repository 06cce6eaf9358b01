"""How benchmarks/mae_few_labels.py's fine-tuning recipe was chosen: a small search on a selection split.

On split seed 0 (``--seed`` for another). The labelled tenth is the one mae_few_labels.py draws (143 images of the 80 %
training part); the selection images are a stratified 360 of the other training images, with their labels, used only to
score the candidates here. The held-out 20 % that the bar is measured on is not read: pre-training sees every training
image (no labels) with the selection images as its val/ (its validation loss only). Each candidate sets the pre-training
epochs (on the ~1437 training images), the fine-tuning epochs (on the tenth), the mask ratio, the reconstruction target
(per-patch normalised pixels, or the pixels themselves: "raw" in the name), the fine-tuning learning rate and the layer
decay (warm-up: the default 5 epochs); the first ones split the 100 epochs of training from scratch, the later ones
pre-train longer (up to 800 epochs, on seed 0 alone: where the gap goes as the budget grows). vit_digits trained from
scratch on the tenth for as many epochs in all is scored the same way. A recipe is chosen on the selection accuracy of
all three split seeds (0, 1, 2), never on one alone. With each pre-trained encoder, a linear probe (logistic regression)
and 5-nearest-neighbours on its features (the CLS token; the mean of the patch tokens) of the tenth, scored on the
selection images, beside the same on a randomly initialised encoder: what of the pre-training a probe can read.

Writes benchmarks/results/mae_search.json (candidates merge into it by name and seed). With --cache DIR the
pre-training runs stay in DIR, where mae_few_labels.py --cache DIR finds the same encoder (same seed, same images,
same settings) instead of training it again.

    python benchmarks/mae_recipe_search.py [--only NAME ...] [--seed 0] [--threads 1] [--cache DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from digits_runs import CACHE_HELP, final_accuracy, machine, write_images
from mae_few_labels import BATCH_SIZE, MAE, SELECTION_IMAGES, common_settings, mae_split, pretrained_mae
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier

from vitkit.model import VisionTransformer
from vitkit.training import TrainConfig, train

RESULTS = Path(__file__).resolve().parent / "results" / "mae_search.json"
SHORT_TOTAL = 100  # the epochs of the first candidates' pre-training and fine-tuning together


class Candidate(NamedTuple):
    pretrain_epochs: int
    fine_tune_epochs: int
    mask_ratio: float
    lr: float  # of the fine-tuning
    layer_decay: float
    norm_pix_loss: bool = True  # False: the pre-training reconstructs the pixels themselves


def short(pretrain: int, mask: float, lr: float, decay: float, total: int = SHORT_TOTAL) -> Candidate:
    """A candidate that splits ``total`` epochs between pre-training and fine-tuning."""
    return Candidate(pretrain, total - pretrain, mask, lr, decay)


CANDIDATES = {
    "p60_lr1e-3_ld0.75": short(60, 0.75, 1e-3, 0.75),
    "p60_lr1e-3_ld1.0": short(60, 0.75, 1e-3, 1.0),
    "p60_lr2e-3_ld0.9": short(60, 0.75, 2e-3, 0.9),
    "p30_lr1e-3_ld0.75": short(30, 0.75, 1e-3, 0.75),
    "p30_lr1e-3_ld1.0": short(30, 0.75, 1e-3, 1.0),
    "p30_lr2e-3_ld0.9": short(30, 0.75, 2e-3, 0.9),
    "p30_lr1e-4_ld1.0": short(30, 0.75, 1e-4, 1.0),  # the default fine-tuning lr of --init-from
    "p30_lr5e-4_ld1.0": short(30, 0.75, 5e-4, 1.0),
    "p30_lr2e-3_ld1.0": short(30, 0.75, 2e-3, 1.0),
    "p30_lr3e-3_ld0.9": short(30, 0.75, 3e-3, 0.9),
    "p20_lr1e-3_ld1.0": short(20, 0.75, 1e-3, 1.0),
    "p30_m0.5_lr1e-3_ld1.0": short(30, 0.5, 1e-3, 1.0),
    "p20_m0.5_lr1e-3_ld1.0": short(20, 0.5, 1e-3, 1.0),
    # Longer pre-training on raw pixels (no per-patch normalisation), 100 fine-tuning epochs.
    "p200_f100_raw_lr1e-3_ld1.0": Candidate(200, 100, 0.75, 1e-3, 1.0, norm_pix_loss=False),
    "p200_f100_raw_lr1e-3_ld0.75": Candidate(200, 100, 0.75, 1e-3, 0.75, norm_pix_loss=False),
    "p100_f100_raw_lr1e-3_ld1.0": Candidate(100, 100, 0.75, 1e-3, 1.0, norm_pix_loss=False),
    # Where longer budgets lead: the MAE paper pre-trains for 800-1600 epochs.
    "p400_f100_raw_lr1e-3_ld1.0": Candidate(400, 100, 0.75, 1e-3, 1.0, norm_pix_loss=False),
    "p800_f100_raw_lr1e-3_ld1.0": Candidate(800, 100, 0.75, 1e-3, 1.0, norm_pix_loss=False),
}
# vit_digits trained from scratch for as many epochs as the candidates' pre-training and fine-tuning together.
SCRATCH = {
    "scratch_vit_digits": SHORT_TOTAL,
    "scratch_vit_digits_e200": 200,
    "scratch_vit_digits_e500": 500,
    "scratch_vit_digits_e900": 900,
}


@torch.no_grad()
def probe_scores(encoder: VisionTransformer, train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray,
                 test_y: np.ndarray) -> dict[str, float]:  # fmt: skip
    """Selection accuracy of a linear probe and of 5-NN on the CLS token and on the mean patch token."""
    encoder.eval()
    mean, std = encoder.config.mean or (0.5,), encoder.config.std or (0.5,)

    def features(x: np.ndarray) -> dict[str, np.ndarray]:
        images = (torch.from_numpy(x).float()[:, None] / 255 - mean[0]) / std[0]
        tokens = encoder.forward_features(images)
        return {"cls": tokens[:, 0].numpy(), "mean": tokens[:, 1:].mean(dim=1).numpy()}

    train_f, test_f = features(train_x), features(test_x)
    scores = {}
    for pool in ("cls", "mean"):
        probe = LogisticRegression(max_iter=5000).fit(train_f[pool], train_y)
        scores[f"linear_{pool}"] = float(probe.score(test_f[pool], test_y))
        knn = KNeighborsClassifier(5).fit(train_f[pool], train_y)
        scores[f"knn_{pool}"] = float(knn.score(test_f[pool], test_y))
    return scores


def save(row: dict, threads: int) -> None:
    """Merge one candidate's row into the results file, best selection accuracy first (written whole, then
    renamed)."""
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    rows = {(old["candidate"], old["seed"]): old for old in results.get("candidates", [])}
    rows[row["candidate"], row["seed"]] = row
    results.update(description=" ".join(__doc__.split("\n\n")[1].split()) + " " + __doc__.split("\n\n")[2].strip(),
                   command="python benchmarks/mae_recipe_search.py", machine=machine(threads),
                   selection_images=SELECTION_IMAGES,
                   candidates=sorted(rows.values(), key=lambda r: (r["seed"], -r["selection_accuracy"])))  # fmt: skip
    temporary = RESULTS.with_suffix(".tmp")
    temporary.write_text(json.dumps(results, indent=1) + "\n")
    os.replace(temporary, RESULTS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=[*CANDIDATES, *SCRATCH], default=[*CANDIDATES, *SCRATCH])
    parser.add_argument("--seed", type=int, default=0, help="split seed (default: 0, where the recipe was chosen)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cache", type=Path, metavar="DIR", help=CACHE_HELP)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    split = mae_split(args.seed)
    train_x, train_y = split.pixels[split.labelled], split.labels[split.labelled]  # for the probes
    test_x, test_y = split.pixels[split.selection], split.labels[split.selection]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        tenth = root / "tenth"
        write_images(split.pixels, split.labels, split.labelled, tenth / "train")
        write_images(split.pixels, split.labels, split.selection, tenth / "val")
        labelled = dict(common_settings(args.seed), data_dir=str(tenth), batch_size=BATCH_SIZE)
        pretrained: dict[tuple[int, float, bool], Path] = {}
        for name in args.only:
            started = time.perf_counter()
            if name in SCRATCH:
                run = train(TrainConfig.from_dict(dict(labelled, model="vit_digits", epochs=SCRATCH[name],
                                                       out=str(root / name))))  # fmt: skip
                row = {"candidate": name, "seed": args.seed, "pretrain_epochs": 0, "fine_tune_epochs": SCRATCH[name],
                       "selection_accuracy": final_accuracy(run.history)}  # fmt: skip
            else:
                candidate = CANDIDATES[name]
                row = {"candidate": name, "seed": args.seed, **candidate._asdict()}
                key = (candidate.pretrain_epochs, candidate.mask_ratio, candidate.norm_pix_loss)
                if key not in pretrained:
                    settings = dataclasses.replace(MAE, mask_ratio=candidate.mask_ratio,
                                                   norm_pix_loss=candidate.norm_pix_loss)  # fmt: skip
                    mae = pretrained_mae(args.cache or root, args.seed, candidate.pretrain_epochs, settings)
                    pretrained[key] = mae.run_dir
                    row["pretrain_val_loss"] = mae.history[-1]["val_loss"]
                    random_encoder = VisionTransformer(mae.encoder.config)
                    for encoder, kind in ((mae.encoder, "mae"), (random_encoder, "random")):
                        scores = probe_scores(encoder, train_x, train_y, test_x, test_y)
                        row.update({f"{probe}_{kind}": score for probe, score in scores.items()})
                tuned = train(TrainConfig.from_dict(dict(labelled, init_from=str(pretrained[key]), lr=candidate.lr,
                                                         layer_decay=candidate.layer_decay, out=str(root / name),
                                                         epochs=candidate.fine_tune_epochs)))  # fmt: skip
                row["selection_accuracy"] = final_accuracy(tuned.history)
            row["seconds"] = time.perf_counter() - started
            save(row, args.threads)
            print(f"{name}: selection accuracy {100 * row['selection_accuracy']:.2f}% ({row['seconds']:.0f} s)",
                  flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
