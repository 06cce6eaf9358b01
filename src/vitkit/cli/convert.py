"""`vitkit convert`: a timm, transformers, torchvision or original JAX checkpoint as a vitkit run folder."""

from __future__ import annotations

import argparse

from vitkit.cli.common import format_count

SOURCES = ("timm", "transformers", "torchvision", "jax")


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "convert",
        help="turn a timm, transformers, torchvision or JAX ViT checkpoint into a vitkit run folder",
        description="Write RUN_DIR (config.json + model.safetensors, with the preprocessing the weights expect) "
        "from a downloaded checkpoint: a .safetensors or .pth/.bin file (read without running code), an original "
        "ViT .npz file, or a transformers model folder. `vitkit predict`, `evaluate --data-dir` and "
        "`train --init-from` then use RUN_DIR like any other run. Nothing is downloaded unless SOURCE is a hub id "
        "(timm or transformers) and that library is installed.",
    )
    parser.add_argument("source", metavar="SOURCE", help="weights file, transformers folder, or hub id")
    parser.add_argument("--from", dest="library", choices=SOURCES, required=True, help="the library SOURCE is from")
    parser.add_argument(
        "--model",
        metavar="NAME",
        help="the architecture where the file does not say it: a timm name (vit_base_patch16_224), a torchvision "
        "name (vit_b_16), or for .npz files a vitkit name giving the image size; a timm file's config.json "
        "beside it is read when this is left out",
    )
    parser.add_argument("--out", metavar="RUN_DIR", required=True, help="run folder to write (must not hold a model)")
    parser.add_argument(
        "--labels",
        metavar="FILE",
        help="class names: one a line, a JSON list, or a JSON object of index -> name (default: a transformers "
        "config's id2label; ImageNet's for a 1000- or 21843-class head (and timm's other ImageNet sizes); else "
        "the class indices)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Convert, check every key and shape, save; print what the run folder now holds."""
    from pathlib import Path

    from vitkit.interop import convert_source
    from vitkit.model.weights import WEIGHTS_FILE

    out = Path(args.out)
    if (out / WEIGHTS_FILE).exists():
        raise FileExistsError(f"{out} already holds a model ({WEIGHTS_FILE}); choose another --out")
    from vitkit.interop.labels import imagenet_labels, read_labels

    model = convert_source(args.source, args.library, args.model)
    config = model.config
    if args.labels is not None:
        model.config = config.replace(class_names=read_labels(args.labels, config.num_classes))
    elif config.class_names is None and config.num_classes:
        model.config = config.replace(class_names=imagenet_labels(config.num_classes))
    model.save_pretrained(out)
    config = model.config
    print(f"converted {args.source} ({args.library}) to {out}")
    print(
        f"  {format_count(sum(p.numel() for p in model.parameters()))} parameters, image {config.image_size[0]}x"
        f"{config.image_size[1]}, patch {config.patch_size[0]}, {config.num_classes} classes, pool {config.pool}"
    )
    names = config.labels
    shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
    source = "indices only: pass --labels FILE to name them" if config.class_names is None else shown
    print(f"  class names: {source}")
    print(
        f"  preprocessing: {config.interpolation} resize, crop_pct {config.crop_pct:g} ({config.crop_mode}), "
        f"mean {config.mean}, std {config.std}"
    )
    return 0
