"""The LoRA bar: a model trained on digits 0-4, adapted to digits 5-9 with LoRA rank 4 and by full fine-tuning.

Per seed, scikit-learn's 8x8 digits are split 80/20 (stratified by the seed) and by class into two image folders
(0-4 and 5-9, each with train/ and val/, val/ the held-out 20 %). The default digits model (vit_digits_stem, the
digits' augmentation, 40 epochs) trains on 0-4; from its weights, 40 epochs on 5-9 fine-tune either every weight
(the fine-tuning defaults: lr 1e-4) or rank-4 adapters plus the new head. The adapters' layers and learning rate are
chosen once, on the first seed, by the accuracy on a validation fifth of the 5-9 training images (the held-out
images play no part), among q,v or q,k,v,proj and lr 1e-3 or 3e-3 (LoRA's adapters start at zero and are few, so
they take a higher rate than full fine-tuning); every seed then uses that choice. Accuracy is the final model's (the
EMA) on the held-out 5-9 images. The LoRA run is exported with ``vitkit export --merge-lora``
(``vitkit.interop.export.export_merged_lora``) and the merged model's logits compared with the adapted model's.

Bar: LoRA trains under 5 % of the weights and lands within 2 points of full fine-tuning (mean over the seeds);
merged export equal to the adapted model (1e-5). Writes benchmarks/results/lora.json.

    python benchmarks/lora_transfer.py [--seeds 0 1 2] [--threads 1]
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import tempfile
import time
from pathlib import Path

from digits_runs import digits_split, final_accuracy, machine, parse_arguments, write_images

from vitkit.data.augment_config import default_augment
from vitkit.interop.export import export_merged_lora
from vitkit.io import load_safetensors
from vitkit.training import TrainConfig, train
from vitkit.training.config import FINETUNE_LR
from vitkit.training.finetune import ADAPTERS_FILE

RESULTS = Path(__file__).resolve().parent / "results" / "lora.json"
RANK = 4
CANDIDATES = [{"lora_targets": targets, "lr": lr} for targets in ("q,v", "q,k,v,proj") for lr in (1e-3, 3e-3)]
BAR_FRACTION, BAR_POINTS, MERGE_TOLERANCE = 0.05, 2.0, 1e-5


def write_split_folders(root: Path, seed: int) -> tuple[Path, Path, Path]:
    """Image folders of the 8x8 digits as PNGs: 0-4 and 5-9, each train/ (80 %) and val/ (20 %, held out), and
    5-9's training images alone (a run takes a validation fifth of them: the choice of LoRA's settings)."""
    pixels, labels, train_idx, test_idx = digits_split(seed)
    for split, indices in (("train", train_idx), ("val", test_idx)):
        write_images(pixels, labels, indices[labels[indices] < 5], root / "0-4" / split)
        write_images(pixels, labels, indices[labels[indices] >= 5], root / "5-9" / split)
    write_images(pixels, labels, train_idx[labels[train_idx] >= 5], root / "5-9-choice" / "train")
    return root / "0-4", root / "5-9", root / "5-9-choice"


def run_seed(seed: int, root: Path, choice: dict | None) -> tuple[dict, list[dict]]:
    """One seed's runs (and, without a ``choice`` of LoRA settings yet, the runs that choose them)."""
    low, high, choosing = write_split_folders(root / "data", seed)
    common = dict(seed=seed, augment=dataclasses.asdict(default_augment("digits")), progress=False, tensorboard=False)
    started = time.perf_counter()
    source = train(TrainConfig.from_dict(dict(common, data_dir=str(low), out=str(root / "source"))))
    adapt = dict(common, init_from=str(source.run_dir), lora_rank=RANK)
    trials = []
    if choice is None:
        for i, candidate in enumerate(CANDIDATES):
            trial = train(TrainConfig.from_dict(dict(adapt, **candidate, data_dir=str(choosing), val_fraction=0.2,
                                                     out=str(root / f"choice{i}"))))  # fmt: skip
            trials.append({**candidate, "accuracy_validation": final_accuracy(trial.history)})
            print(
                f"  choosing: {candidate} -> {100 * trials[-1]['accuracy_validation']:.2f}% on validation", flush=True
            )
        best = max(trials, key=lambda trial: trial["accuracy_validation"])
        choice = {key: best[key] for key in CANDIDATES[0]}
    full = train(TrainConfig.from_dict(dict(common, data_dir=str(high), init_from=str(source.run_dir),
                                            out=str(root / "full"))))  # fmt: skip
    lora = train(TrainConfig.from_dict(dict(adapt, **choice, data_dir=str(high), out=str(root / "lora"))))
    _, difference = export_merged_lora(lora.run_dir, root / "merged")
    trainable = sum(t.numel() for t in load_safetensors(lora.run_dir / ADAPTERS_FILE).values())
    total = sum(p.numel() for p in lora.model.parameters())  # the plain model: what full fine-tuning trains
    row = {
        "seed": seed, **choice, "accuracy_source_0_4": final_accuracy(source.history),
        "accuracy_full_fine_tuning": final_accuracy(full.history), "accuracy_lora": final_accuracy(lora.history),
        "lora_trainable": trainable, "weights": total, "share_of_weights_lora_trains": trainable / total,
        "merged_max_abs_logit_difference": difference, "seconds": time.perf_counter() - started,
    }  # fmt: skip
    return row, trials


def main() -> None:
    args = parse_arguments(__doc__)
    rows: list[dict] = []
    choice: dict | None = None
    trials: list[dict] = []
    started = time.perf_counter()
    for seed in args.seeds:
        with tempfile.TemporaryDirectory() as tmp:
            row, seed_trials = run_seed(seed, Path(tmp), choice)
        trials += [{"seed": seed, **trial} for trial in seed_trials]
        choice = {key: row[key] for key in CANDIDATES[0]}
        rows.append(row)
        print(f"seed {seed}: source (0-4) {100 * row['accuracy_source_0_4']:.2f}% | 5-9: full fine-tuning "
              f"{100 * row['accuracy_full_fine_tuning']:.2f}%, LoRA rank {RANK} on {row['lora_targets']} "
              f"at lr {row['lr']:g} "
              f"{100 * row['accuracy_lora']:.2f}% training "
              f"{100 * row['share_of_weights_lora_trains']:.2f}% of the weights | merged vs adapted logits "
              f"{row['merged_max_abs_logit_difference']:.2g} | {row['seconds']:.0f} s", flush=True)  # fmt: skip
    full, lora = (statistics.mean(row[key] for row in rows) for key in ("accuracy_full_fine_tuning", "accuracy_lora"))
    fraction = max(row["share_of_weights_lora_trains"] for row in rows)
    difference = max(row["merged_max_abs_logit_difference"] for row in rows)
    gap = 100 * (full - lora)
    met = fraction < BAR_FRACTION and gap <= BAR_POINTS and difference <= MERGE_TOLERANCE
    summary = {
        "seeds": len(rows), "accuracy_full_fine_tuning": full, "accuracy_lora": lora, "gap_points": gap,
        "share_of_weights_lora_trains": fraction, "merged_max_abs_logit_difference": difference,
        "bar": f"LoRA rank {RANK} trains < 5 % of the weights, within {BAR_POINTS:g} points of full fine-tuning, "
        f"merged export equal to the adapted model ({MERGE_TOLERANCE:g})", "bar_met": met,
    }  # fmt: skip
    print(f"mean over {len(rows)} seed(s): full fine-tuning {100 * full:.2f}%, LoRA {100 * lora:.2f}% "
          f"({gap:.2f} points behind), LoRA trains {100 * fraction:.2f}% of the weights -> bar "
          f"{'met' if met else 'NOT met'}")  # fmt: skip
    RESULTS.write_text(json.dumps({
        "description": __doc__.split("\n\n")[1].replace("\n", " "),
        "command": "python benchmarks/lora_transfer.py",
        "machine": machine(args.threads),
        "run_seconds": time.perf_counter() - started,
        "summary": summary,
        "settings": {"rank": RANK, "alpha": RANK, **(choice or {}), "full_fine_tuning_lr": FINETUNE_LR,
                     "model": "vit_digits_stem", "epochs": 40},
        "choice_of_lora_settings": trials,
        "runs": rows,
    }, indent=1) + "\n")  # fmt: skip
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
