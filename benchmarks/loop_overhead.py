"""How much of `vitkit train`'s epoch is the model's own work: vitkit's epoch beside a bare loop, in one process.

The bare loop trains the same model (vitkit's VisionTransformer, same config), on the same in-memory data, with
the same batch size, AdamW, label smoothing, gradient clipping and a random shift of the whole batch by one
``affine_grid`` + ``grid_sample``: the least a training epoch can cost. vitkit's epoch is a real ``train()`` run
(its ``epoch_time_s``: steps, validation of raw and EMA weights, checkpoint, metrics). Rounds alternate between
the two so that a busy machine slows both alike; the medians of the epochs after the first are compared.

    python benchmarks/loop_overhead.py [--folder DIR --image-size 28 --model vit_pico_patch7_28] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from vitkit.data.batch_augment import step_generator
from vitkit.evaluation import tally
from vitkit.training import TrainConfig, build_model, build_run_data, train
from vitkit.training.config import DEFAULT_MODEL
from vitkit.training.distributed import DistContext
from vitkit.training.loaders import Loaders


def bare_epochs(config: TrainConfig, epochs: int) -> list[float]:
    """Seconds per epoch of the plainest loop over the same model and data."""
    data = build_run_data(config)
    model = build_model(config, data)
    images, labels = data.memory[0], data.memory[1]
    mean, std = torch.tensor(data.mean).view(1, -1, 1, 1), torch.tensor(data.std).view(1, -1, 1, 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    times = []
    for epoch in range(epochs):
        started = time.perf_counter()
        model.train()
        order = torch.randperm(len(labels))
        for step in range(len(labels) // config.batch_size):
            batch = order[step * config.batch_size : (step + 1) * config.batch_size]
            x = (images[batch].float() / 255 - mean) / std
            shift = (torch.rand(len(batch), 2, generator=step_generator(0, epoch, step)) - 0.5) * 0.4
            theta = torch.cat([torch.eye(2).expand(len(batch), 2, 2), shift.unsqueeze(-1)], dim=2)
            x = F.grid_sample(x, F.affine_grid(theta, list(x.shape), align_corners=False), align_corners=False)
            loss = F.cross_entropy(model(x), labels[batch], label_smoothing=config.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip_grad)
            optimizer.step()
        times.append(time.perf_counter() - started)
    return times


def vitkit_epochs(config: TrainConfig, out: Path) -> tuple[list[float], list[float], float]:
    """(seconds per epoch, of which in optimizer steps, seconds to validate once) of a real train() run."""
    result = train(config.replace(out=str(out)))
    data = build_run_data(config)
    epochs = [r["epoch_time_s"] for r in result.history]
    count = (len(data.train) // config.batch_size) * config.batch_size
    steps = [count / r["images_per_s"] for r in result.history]
    loaders = Loaders(data, config.batch_size, 1, 0, config.seed, DistContext(), torch.device("cpu"))
    started = time.perf_counter()
    tally(result.model, loaders.val(), data.num_classes, torch.device("cpu"))
    return epochs, steps, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", help="an image folder (default: the built-in digits)")
    parser.add_argument("--image-size", type=int)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--epochs", type=int, default=4, help="epochs per round (the first of each is not counted)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    settings = dict(model=args.model, epochs=args.epochs, progress=False, tensorboard=False, cache="on")
    if args.folder:
        settings.update(data_dir=args.folder, image_size=args.image_size)
    config = TrainConfig.from_dict(settings)
    vitkit, steps, bare, validate = [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            epochs, in_steps, val_s = vitkit_epochs(config, Path(tmp) / f"run{round_}")
            vitkit += epochs[1:]
            steps += in_steps[1:]
            validate.append(val_s)
            bare += bare_epochs(config, args.epochs)[1:]
    v, s, b, e = (statistics.median(x) for x in (vitkit, steps, bare, validate))
    print(f"{config.dataset} {args.model}, batch {config.batch_size}, {torch.get_num_threads()} thread(s)")
    print(f"bare loop epoch     {b:7.3f} s")
    print(f"vitkit epoch        {v:7.3f} s   ratio {v / b:.2f}x")
    print(f"  optimizer steps   {s:7.3f} s   ({s / b:.2f}x the bare loop: EMA update, per-step checks, bookkeeping)")
    print(f"  validation        {2 * e:7.3f} s   (raw and EMA weights; one pass measured at {e:.3f} s)")
    print(f"  the rest          {v - s - 2 * e:7.3f} s   (best weights, checkpoint, metrics files)")


if __name__ == "__main__":
    main()
