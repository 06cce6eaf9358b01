"""`vitkit explain`: pictures of what a trained model looks at, as PNGs and an index.html, and (--faithfulness)
how faithful each map is to the model."""

from __future__ import annotations

import argparse
from collections.abc import Sized
from typing import cast

from vitkit.cli.common import (
    add_device_argument,
    fraction,
    int_at_least,
    load_run_model,
    pick_cli_device,
    run_held_out_split,
)

HELD_OUT_PICTURES = 3  # images drawn when the run's held-out split stands in for image files


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "explain",
        help="draw what a model looks at: attention rollout, Grad-CAM, transformer attribution, ...; score the maps",
        description="For each image: the patch grid, the attention rollout next to the top predictions, Grad-CAM, "
        "transformer attribution and the last block's attention per head; for the model: position-embedding "
        "similarity, mean attention distance and patch-embedding filters. Writes PNG files and an index.html "
        "that shows them together. With --faithfulness, also the deletion and insertion scores of each map "
        "against a random order (faithfulness.png, faithfulness.json).",
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="run folder (config.json + model.safetensors)")
    parser.add_argument(
        "images", metavar="IMAGE", nargs="*",
        help=f"image files to explain; none: the run's held-out split (the first {HELD_OUT_PICTURES} drawn, up to "
        "--max-images scored), rebuilt from its train_config.json",
    )  # fmt: skip
    parser.add_argument("--out", required=True, metavar="DIR", help="folder for the PNG files and index.html")
    parser.add_argument(
        "--head-fusion", choices=("mean", "max", "min"), default="mean",
        help="how the rollout combines each block's heads (default: mean)",
    )  # fmt: skip
    parser.add_argument(
        "--discard-ratio", type=fraction, default=0.0,
        help="fraction of the weakest attention weights the rollout drops in each row, in [0, 1) (default: 0)",
    )  # fmt: skip
    parser.add_argument("--top-k", type=int_at_least(1), default=3, help="predictions shown per image (default: 3)")
    parser.add_argument(
        "--target", metavar="CLASS", help="class (name or index) for Grad-CAM (default: the predicted one)"
    )
    parser.add_argument(
        "--filters", type=int_at_least(1), default=28, help="principal components of the patch filters (default: 28)"
    )
    parser.add_argument(
        "--faithfulness", action="store_true",
        help="score each map by deletion and insertion of patches in its order, against a random order",
    )  # fmt: skip
    parser.add_argument(
        "--steps", type=int_at_least(1),
        help="deletion/insertion steps (default: 16, or one per patch for models with fewer)",
    )  # fmt: skip
    parser.add_argument(
        "--baseline", choices=("rise", "blur", "mean"), default="rise",
        help="what a removed patch shows: rise (RISE's protocol: deletion to the data's mean colour, insertion "
        "from the blurred image), blur or mean for both (default: rise)",
    )  # fmt: skip
    parser.add_argument(
        "--max-images", type=int_at_least(1), default=200,
        help="held-out images scored when no image files are given (default: 200)",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="seed of the random order (default: 0)")
    add_device_argument(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from vitkit.evaluation import class_names_of
    from vitkit.explain.faithfulness import compare_methods
    from vitkit.explain.report import explain_images, load_images

    model = load_run_model(args.run_dir, pick_cli_device(args.device))
    target = None
    if args.target is not None:
        names = class_names_of(model)
        if args.target in names:
            target = names.index(args.target)
        elif args.target.isdigit() and int(args.target) < len(names):
            target = int(args.target)
        else:
            raise ValueError(
                f"--target {args.target!r} is not one of the model's classes {names} or an index below {len(names)}"
            )
    if args.images:
        images, names, drawn = load_images(model, args.images), [str(path) for path in args.images], len(args.images)
        source = f"{len(args.images)} image file(s)"
    else:
        instead = "give image files to explain"
        dataset, source = run_held_out_split(args.run_dir, model, instead)
        count = min(len(cast(Sized, dataset)), args.max_images if args.faithfulness else HELD_OUT_PICTURES)
        images = torch.stack([dataset[i][0] for i in range(count)])
        names, drawn = [f"held-out image {i}" for i in range(count)], min(count, HELD_OUT_PICTURES)
    curves, settings = None, None
    if args.faithfulness:
        curves = compare_methods(model, images, args.steps, args.baseline, target, args.seed)
        steps = len(next(iter(curves.values())).fractions) - 1
        explained = "predicted class" if target is None else class_names_of(model)[target]
        settings = {"run": str(args.run_dir), "data": source, "baseline": args.baseline, "steps": steps,
                    "seed": args.seed, "target": explained}  # fmt: skip
    index = explain_images(
        model, images[:drawn], names[:drawn], args.out, head_fusion=args.head_fusion, discard_ratio=args.discard_ratio,
        top_k=args.top_k, target=target, num_filters=args.filters, faithfulness=curves, faithfulness_settings=settings,
    )  # fmt: skip
    print(f"wrote {index}")
    if curves is not None:
        from vitkit.explain.faithfulness import summary

        print(f"faithfulness on {len(images)} images ({source}), {args.baseline} baseline: mean AUC")
        for name, scores in summary(curves).items():
            print(f"  {name:<24} deletion {scores['deletion_auc']:.3f}   insertion {scores['insertion_auc']:.3f}")
    return 0
