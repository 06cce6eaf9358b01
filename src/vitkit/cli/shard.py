"""`vitkit shard`: write an image folder as WebDataset tar shards that `vitkit train --data-dir` streams."""

from __future__ import annotations

import argparse

from vitkit.cli.common import int_at_least


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "shard",
        help="write an image folder as WebDataset tar shards (for data on object storage or shared file systems)",
        description="Write DIR (DIR/train/<class>/..., optionally DIR/val/<class>/...) as WebDataset shards "
        "OUT/train-000000.tar ... and OUT/val-000000.tar ..., each sample the image file as stored plus its class "
        "index (.cls), in an order shuffled by --seed, and OUT/shards.json (classes, counts). Without val/, the "
        "--val-fraction of train/ that training on the folder holds out becomes the val shards.",
    )
    parser.add_argument("data_dir", metavar="DIR", help="image folder in the layout `vitkit train --data-dir` reads")
    parser.add_argument("--out", required=True, metavar="SHARDS", help="folder to write the shards into")
    parser.add_argument("--shard-size", type=int_at_least(1), default=1000, help="samples per shard (default: 1000)")
    parser.add_argument("--val-fraction", type=float, default=0.1,
                        help="held-out fraction of train/ when DIR has no val/ (default: 0.1)")  # fmt: skip
    parser.add_argument("--seed", type=int_at_least(0), default=0, help="seed of the order and split (default: 0)")
    parser.add_argument(
        "--skip-bad-files", action="store_true",
        help="leave out files that are not readable images (reporting how many) instead of failing before writing",
    )  # fmt: skip
    parser.add_argument(
        "--workers", type=int_at_least(0), default=0, help="processes that check the images first (default: 0)"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Write the shards and print one line per split."""
    from vitkit.data.shards import write_shards

    info = write_shards(args.data_dir, args.out, args.shard_size, val_fraction=args.val_fraction, seed=args.seed,
                        skip_bad_files=args.skip_bad_files, workers=args.workers)  # fmt: skip
    for split, entry in info["splits"].items():
        samples = sum(shard["samples"] for shard in entry["shards"])
        print(f"{split}: {samples} images in {len(entry['shards'])} shard(s)")
    print(f"{len(info['classes'])} classes; shards and shards.json in {args.out}")
    return 0
