"""How benchmarks/mae_few_labels.py's fine-tuning recipe was chosen: a small search on a selection split.

On split seed 0 (``--seed`` for another). The labelled tenth is the one mae_few_labels.py draws (143 images of the
80 % training part); the selection images are a stratified 360 of the other training images, with their labels, used
only to score the candidates here. The held-out 20 % that the bar is measured on is not read: pre-training sees
every training image (no labels) with the selection images as its val/ (its validation loss only). Each candidate
splits the 100 epochs of training from scratch between pre-training (on the ~1437 training images) and fine-tuning
(on the tenth) and sets the mask ratio, the fine-tuning learning rate and the layer decay (warm-up: the default 5
epochs); vit_digits trained from scratch for 100 epochs on the tenth is scored the same way. The candidate of best
selection accuracy on split seed 0 is the one mae_few_labels.py runs; rows of other split seeds only show how that
choice carries over. With each pre-trained encoder, a linear probe (logistic regression) and 5-nearest-neighbours on
its features (the CLS token; the mean of the patch tokens) of the tenth, scored on the selection images, beside the
same on a randomly initialised encoder: what of the pre-training a probe can read.

Writes benchmarks/results/mae_search.json (candidates merge into it by name and seed, so that parts can run in
parallel).

    python benchmarks/mae_recipe_search.py [--only NAME ...] [--seed 0] [--threads 1]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from digits_runs import digits_split, final_accuracy, machine, write_images
from mae_few_labels import BATCH_SIZE, LABELLED_SHARE, MAE, TOTAL_EPOCHS
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.neighbors import KNeighborsClassifier

from vitkit.data.augment_config import default_augment
from vitkit.model import VisionTransformer
from vitkit.pretrain.run import pretrain
from vitkit.training import TrainConfig, train

RESULTS = Path(__file__).resolve().parent / "results" / "mae_search.json"
SELECTION_IMAGES = 360
# name -> (pre-training epochs, mask ratio, fine-tuning lr, layer decay); fine-tuning takes the rest of TOTAL_EPOCHS.
CANDIDATES = {
    "p60_lr1e-3_ld0.75": (60, 0.75, 1e-3, 0.75),
    "p60_lr1e-3_ld1.0": (60, 0.75, 1e-3, 1.0),
    "p60_lr2e-3_ld0.9": (60, 0.75, 2e-3, 0.9),
    "p30_lr1e-3_ld0.75": (30, 0.75, 1e-3, 0.75),
    "p30_lr1e-3_ld1.0": (30, 0.75, 1e-3, 1.0),
    "p30_lr2e-3_ld0.9": (30, 0.75, 2e-3, 0.9),
    "p30_lr1e-4_ld1.0": (30, 0.75, 1e-4, 1.0),  # the default fine-tuning lr of --init-from
    "p30_lr5e-4_ld1.0": (30, 0.75, 5e-4, 1.0),
    "p30_lr2e-3_ld1.0": (30, 0.75, 2e-3, 1.0),
    "p30_lr3e-3_ld0.9": (30, 0.75, 3e-3, 0.9),
    "p20_lr1e-3_ld1.0": (20, 0.75, 1e-3, 1.0),
    "p30_m0.5_lr1e-3_ld1.0": (30, 0.5, 1e-3, 1.0),
    "p20_m0.5_lr1e-3_ld1.0": (20, 0.5, 1e-3, 1.0),
}
SCRATCH = "scratch_vit_digits"


def split_images(root: Path, seed: int) -> tuple[Path, Path, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(pre-training folder, labelled folder), each with the selection images as val/; and the pixels and labels
    of the tenth and of the selection images, for the probes."""
    pixels, labels, train_idx, _ = digits_split(seed)
    labelled, rest = train_test_split(train_idx, train_size=LABELLED_SHARE, stratify=labels[train_idx],
                                      random_state=seed)  # fmt: skip
    selection, _ = train_test_split(rest, train_size=SELECTION_IMAGES, stratify=labels[rest], random_state=seed)
    for name, train_part in (("all", train_idx), ("tenth", labelled)):
        write_images(pixels, labels, train_part, root / name / "train")
        write_images(pixels, labels, selection, root / name / "val")
    return root / "all", root / "tenth", pixels[labelled], labels[labelled], pixels[selection], labels[selection]


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
    parser.add_argument("--only", nargs="+", choices=[*CANDIDATES, SCRATCH], default=[*CANDIDATES, SCRATCH])
    parser.add_argument("--seed", type=int, default=0, help="split seed (default: 0, where the recipe was chosen)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    common = dict(
        seed=args.seed, augment=dataclasses.asdict(default_augment("digits")), progress=False, tensorboard=False
    )
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        everything, tenth, train_x, train_y, test_x, test_y = split_images(root / "data", args.seed)
        labelled = dict(common, data_dir=str(tenth), batch_size=BATCH_SIZE)
        pretrained: dict[tuple[int, float], Path] = {}
        for name in args.only:
            started = time.perf_counter()
            if name == SCRATCH:
                run = train(TrainConfig.from_dict(dict(labelled, model="vit_digits", epochs=TOTAL_EPOCHS,
                                                       out=str(root / name))))  # fmt: skip
                row = {"candidate": name, "seed": args.seed, "pretrain_epochs": 0, "fine_tune_epochs": TOTAL_EPOCHS,
                       "selection_accuracy": final_accuracy(run.history)}  # fmt: skip
            else:
                pretrain_epochs, mask_ratio, lr, layer_decay = CANDIDATES[name]
                row = {"candidate": name, "seed": args.seed, "pretrain_epochs": pretrain_epochs,
                       "fine_tune_epochs": TOTAL_EPOCHS - pretrain_epochs, "mask_ratio": mask_ratio, "lr": lr,
                       "layer_decay": layer_decay}  # fmt: skip
                key = (pretrain_epochs, mask_ratio)
                if key not in pretrained:
                    unlabelled = dict(common, data_dir=str(everything), model="vit_digits", drop_path=0.0,
                                      epochs=pretrain_epochs, out=str(root / f"mae{key}"))  # fmt: skip
                    mae = pretrain(TrainConfig.from_dict(unlabelled), dataclasses.replace(MAE, mask_ratio=mask_ratio))
                    pretrained[key] = mae.run_dir
                    row["pretrain_val_loss"] = mae.history[-1]["val_loss"]
                    random_encoder = VisionTransformer(mae.encoder.config)
                    for encoder, kind in ((mae.encoder, "mae"), (random_encoder, "random")):
                        scores = probe_scores(encoder, train_x, train_y, test_x, test_y)
                        row.update({f"{probe}_{kind}": score for probe, score in scores.items()})
                tuned = train(TrainConfig.from_dict(dict(labelled, init_from=str(pretrained[key]), lr=lr,
                                                         layer_decay=layer_decay, epochs=TOTAL_EPOCHS - pretrain_epochs,
                                                         out=str(root / name))))  # fmt: skip
                row["selection_accuracy"] = final_accuracy(tuned.history)
            row["seconds"] = time.perf_counter() - started
            save(row, args.threads)
            print(f"{name}: selection accuracy {100 * row['selection_accuracy']:.2f}% ({row['seconds']:.0f} s)",
                  flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
