"""`vitkit explain`: pictures of what a trained model looks at, as PNGs and an index.html."""

from __future__ import annotations

import argparse

from vitkit.cli.common import add_device_argument, fraction, int_at_least, load_run_model, pick_cli_device


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "explain",
        help="draw what a model looks at: attention rollout, Grad-CAM, position embeddings, ...",
        description="For each image: the patch grid, the attention rollout next to the top predictions, Grad-CAM "
        "and the last block's attention per head; for the model: position-embedding similarity, mean attention "
        "distance and patch-embedding filters. Writes PNG files and an index.html that shows them together.",
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="run folder (config.json + model.safetensors)")
    parser.add_argument("images", metavar="IMAGE", nargs="+", help="image files to explain")
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
    add_device_argument(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vitkit.evaluation import class_names_of
    from vitkit.explain.report import explain_files

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
    index = explain_files(
        model, args.images, args.out, head_fusion=args.head_fusion, discard_ratio=args.discard_ratio,
        top_k=args.top_k, target=target, num_filters=args.filters,
    )  # fmt: skip
    print(f"wrote {index}")
    return 0
