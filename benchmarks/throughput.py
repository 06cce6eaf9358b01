"""Inference throughput of vitkit beside timm and torchvision, same architecture, same process, same inputs.

Each library's model is built at the named size with random weights (speed does not depend on their
values), run in eval mode under torch.inference_mode, and timed in alternating rounds so that noise
on this shared machine hits all of them alike. Prints images/s per library (median of the rounds)
and vitkit's ratio to each peer (> 1: vitkit is faster).

    python benchmarks/throughput.py [--model vit_tiny_patch16_224] [--batch-size 8] [--rounds 7]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import vitkit

TORCHVISION_NAMES = {"vit_base_patch16_224": "vit_b_16", "vit_base_patch32_224": "vit_b_32",
                     "vit_large_patch16_224": "vit_l_16", "vit_large_patch32_224": "vit_l_32",
                     "vit_huge_patch14_224": "vit_h_14"}  # fmt: skip


def build_peers(name: str) -> dict[str, torch.nn.Module]:
    models: dict[str, torch.nn.Module] = {"vitkit": vitkit.create_model(name)}
    try:
        import timm

        models["timm"] = timm.create_model(name, num_classes=1000)
    except ImportError:
        print("timm not installed: skipped")
    if name in TORCHVISION_NAMES:
        import torchvision

        models["torchvision"] = getattr(torchvision.models, TORCHVISION_NAMES[name])()
    return {label: model.eval() for label, model in models.items()}


def time_once(model: torch.nn.Module, images: torch.Tensor, iterations: int) -> float:
    with torch.inference_mode():
        start = time.perf_counter()
        for _ in range(iterations):
            model(images)
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vit_tiny_patch16_224")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    torch.manual_seed(0)
    models = build_peers(args.model)
    size = vitkit.get_config(args.model).image_size
    images = torch.randn(args.batch_size, 3, *size)
    for model in models.values():  # warm-up
        time_once(model, images, 1)
    seconds: dict[str, list[float]] = {label: [] for label in models}
    for _ in range(args.rounds):
        for label, model in models.items():
            seconds[label].append(time_once(model, images, args.iterations))

    def throughput(label: str) -> float:
        return args.batch_size * args.iterations / statistics.median(seconds[label])

    print(f"{args.model}, batch {args.batch_size}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    for label in models:
        print(f"  {label:12s} {throughput(label):8.1f} images/s")
    for label in models:
        if label != "vitkit":
            print(f"  vitkit / {label}: {throughput('vitkit') / throughput(label):.2f}x")


if __name__ == "__main__":
    main()
