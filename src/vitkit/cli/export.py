"""`vitkit export`: a run's model as ONNX (checked with onnxruntime), a transformers folder or a timm state dict;
``--merge-lora``: a LoRA run's adapters merged into a plain vitkit model folder (checked against the adapted model)."""

from __future__ import annotations

import argparse
from pathlib import Path

FORMATS = ("onnx", "transformers", "timm")
ONNX_TOLERANCE = 1e-4
MERGE_TOLERANCE = 1e-5  # fp32 logits of the merged model against the adapted one


def _size(text: str) -> tuple[int, int]:
    """argparse type: 224 or 224x320 (height x width)."""
    try:
        parts = [int(p) for p in text.lower().split("x")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a size such as 224 or 224x320, got {text!r}") from None
    if len(parts) not in (1, 2) or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"expected a size such as 224 or 224x320, got {text!r}")
    return (parts[0], parts[-1])


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "export",
        help="write a run's model as ONNX, a transformers folder or a timm state dict",
        description="onnx: a model with a dynamic batch size, checked with onnxruntime against PyTorch (the max "
        "abs difference of logits is printed); --dynamic-image-size interpolates the position vectors in the graph "
        "so one file serves several image sizes. transformers: a folder for "
        "ViTForImageClassification.from_pretrained, with an image-processor config. timm: a state dict and the "
        "timm.create_model(...) call it fits. --merge-lora (a LoRA run, from `vitkit train --lora-rank`): a plain "
        "vitkit model folder, the base weights with the adapters merged in, checked against the adapted model. "
        "Every format exports a LoRA run's merged model.",
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="run folder (config.json + model.safetensors)")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--format", choices=FORMATS, help="what to write")
    what.add_argument(
        "--merge-lora",
        action="store_true",
        help="a LoRA run's adapters merged into its base weights: a vitkit model folder (config.json + "
        "model.safetensors) with the adapted model's logits",
    )
    parser.add_argument(
        "--out", metavar="PATH", required=True, help="the .onnx file, transformers folder, timm file or model folder"
    )
    parser.add_argument(
        "--dynamic-image-size", action="store_true", help="onnx: accept any image size that is a multiple of the patch"
    )
    parser.add_argument(
        "--check-size",
        type=_size,
        action="append",
        metavar="HxW",
        help="onnx with --dynamic-image-size: an image size to check (repeatable; default: 1.5x and 0.5x the model's, "
        "rounded to patches)",
    )
    parser.set_defaults(func=run)


def _default_check_sizes(image_size: tuple[int, int], patch_size: tuple[int, int]) -> list[tuple[int, int]]:
    def scaled(factor: float) -> tuple[int, int]:
        height, width = (max(p, round(s * factor / p) * p) for s, p in zip(image_size, patch_size))
        return (height, width)

    return [scaled(1.5), scaled(0.5)]


def run(args: argparse.Namespace) -> int:
    """Export, check where a check is possible, print the result and how to load it."""
    import torch

    from vitkit.cli.common import EXIT_FAILED, load_run_model, report_error

    if args.merge_lora:
        from vitkit.interop.export import export_merged_lora

        if args.dynamic_image_size or args.check_size:
            raise ValueError("--dynamic-image-size and --check-size are for --format onnx, not --merge-lora")

        folder, difference = export_merged_lora(args.run_dir, args.out)
        print(f"wrote {folder}: a plain vitkit model (config.json + model.safetensors, adapters merged)")
        print(f"  merged vs adapted model, max abs difference of logits: {difference:.3g}")
        if difference > MERGE_TOLERANCE:
            report_error(
                f"the merged model differs from the adapted one by {difference:.3g} (more than {MERGE_TOLERANCE:g})"
            )
            return EXIT_FAILED
        return 0
    from vitkit.training.finetune import LORA_FILE

    model = load_run_model(args.run_dir, torch.device("cpu"))
    if (Path(args.run_dir) / LORA_FILE).is_file():
        print(f"{args.run_dir} is a LoRA run: exporting its merged model ({args.run_dir}/model.safetensors)")
    if args.format == "onnx":
        from vitkit.interop.export import check_onnx, export_onnx

        if args.check_size and not args.dynamic_image_size:
            raise ValueError("--check-size needs --dynamic-image-size (a fixed-size model takes one image size)")
        sizes = args.check_size or (
            _default_check_sizes(model.image_size, model.patch_size) if args.dynamic_image_size else []
        )
        for size in sizes:
            if any(s % p for s, p in zip(size, model.patch_size)):
                patch = model.patch_size
                raise ValueError(f"--check-size {size[0]}x{size[1]} is not a multiple of the patch size {patch}")
        path = export_onnx(model, args.out, dynamic_image_size=args.dynamic_image_size)
        differences = check_onnx(model, path, image_sizes=tuple(sizes))
        print(f"wrote {path} (input 'images' (batch, {model.in_channels}, H, W), output 'logits')")
        print(
            "  metadata: class_names, image_size, in_channels, mean, std, interpolation, crop_pct, crop_mode "
            "(JSON values; docs/guides/onnx.md shows how to use them)"
        )
        checks = ", ".join(f"{name} {difference:.3g}" for name, difference in differences.items())
        print(f"  onnxruntime vs PyTorch, max abs difference of logits: {checks}")
        worst = max(differences.values())
        if worst > ONNX_TOLERANCE:
            report_error(f"the ONNX model differs from PyTorch by {worst:.3g} (more than {ONNX_TOLERANCE:g})")
            return EXIT_FAILED
        return 0
    if args.format == "transformers":
        from vitkit.interop import to_transformers

        folder = to_transformers(model, args.out)
        print(f"wrote {folder}: load it with transformers.ViTForImageClassification.from_pretrained({str(folder)!r})")
        print(f"  and its preprocessing with transformers.AutoImageProcessor.from_pretrained({str(folder)!r})")
        return 0
    from vitkit.interop.export import export_timm

    call = export_timm(model, args.out)
    loader = "safetensors.torch.load_file" if str(args.out).endswith(".safetensors") else "torch.load"
    print(f"wrote {args.out}: a timm state dict; load it with")
    print("  import functools, timm, torch" if "functools" in call else "  import timm, torch")
    print(f"  model = {call}")
    print(f"  model.load_state_dict({loader}({str(args.out)!r}))")
    return 0
