"""`vitkit fewshot`: few-shot linear accuracy of a run's frozen features (the ViT paper's protocol)."""

from __future__ import annotations

import argparse
import json

from vitkit.cli.common import (
    add_device_argument,
    int_at_least,
    load_run_model,
    percent,
    pick_cli_device,
    positive_number,
)


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "fewshot",
        help="few-shot linear accuracy of a run's frozen features",
        description="For each shot count N, draw N images per class from DIR/train/<class>/ (--draws seeded draws), "
        "fit a regularised least-squares classifier onto {-1, 1} targets to their frozen features in closed form, "
        "and measure its accuracy on every image of DIR/val/<class>/; prints the mean and standard deviation over "
        "the draws. The classes are the folder's own, not the run's.",
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="run folder (config.json + model.safetensors)")
    parser.add_argument(
        "--data-dir", metavar="DIR", required=True, help="DIR/train/<class>/... and DIR/val/<class>/..."
    )
    parser.add_argument(
        "--shots", type=int_at_least(1), nargs="+", default=[1, 5, 10, 25], metavar="N",
        help="images per class to fit on (default: 1 5 10 25)",
    )  # fmt: skip
    parser.add_argument("--draws", type=int_at_least(1), default=5, help="random draws per shot count (default: 5)")
    parser.add_argument("--alpha", type=positive_number, default=1.0, help="L2 penalty of the fit (default: 1.0)")
    parser.add_argument("--seed", type=int_at_least(0), default=0, help="seed of the draws (default: 0)")
    parser.add_argument("--batch-size", type=int_at_least(1), default=256, help="images per batch (default: 256)")
    parser.add_argument(
        "--skip-bad-files",
        action="store_true",
        help="leave out files that are not readable images (reporting how many)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    add_device_argument(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vitkit.fewshot import few_shot_evaluation, few_shot_folders

    model = load_run_model(args.run_dir, pick_cli_device(args.device))
    data = few_shot_folders(args.data_dir, model, skip_bad_files=args.skip_bad_files)
    results = few_shot_evaluation(
        model, data.train, data.train_labels, data.val, data.val_labels, args.shots, draws=args.draws,
        seed=args.seed, alpha=args.alpha, batch_size=args.batch_size,
    )  # fmt: skip
    if args.json:
        settings = {"draws": args.draws, "alpha": args.alpha, "seed": args.seed, "classes": data.class_names}
        summary = {"run_dir": str(args.run_dir), "data_dir": str(args.data_dir), **settings}
        print(json.dumps({**summary, "val_images": len(data.val_labels), "results": [r.to_dict() for r in results]}))
        return 0
    print(
        f"few-shot linear accuracy of {args.run_dir} on {args.data_dir} ({len(data.class_names)} classes, "
        f"{len(data.val_labels)} val images; {args.draws} draw(s), alpha {args.alpha:g})"
    )
    for result in results:
        print(f"  {result.shots:>4}-shot: {percent(result.mean):>8} +- {100 * result.std:.2f}")
    return 0
