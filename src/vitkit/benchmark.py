"""Speed beside the peers: one process, same threads, same inputs, inference mode, rounds interleaved.

Every model of one comparison (vitkit plain, vitkit optimized, timm, transformers, torchvision,
vit-pytorch, ONNX Runtime int8) is timed once per round, round after round, so that noise on a shared
machine hits all of them alike; images/s is the median over rounds. GFLOP/s uses the architecture's
multiply-adds (counted once with torch's FlopCounterMode on the plain model, 2 FLOPs each), and its share
of a float32 matrix-multiply peak timed in the same rounds (the faster of PyTorch's two CPU products, MKL's through
``a @ b`` and oneDNN's). Peak memory is the peak resident memory of a
fresh process that builds the model, then runs the batch (each batch size in turn, smallest first, the peak reset
before each), minus that process's memory after importing torch, vitkit and the model's library; glibc's pooling of
large blocks is off there, so the figure follows the live tensors (see ``unpooled_malloc``).
Peers are optional (the `bench` extra): a missing one is skipped with a note.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import gc
import importlib
import logging
import multiprocessing
import resource
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from vitkit.model import VisionTransformer, get_config
from vitkit.model.config import ViTConfig
from vitkit.optimize.onednn import linear, onednn_available

logger = logging.getLogger(__name__)

FP32_PEERS = ("timm", "transformers", "torchvision", "vit-pytorch")
VITKIT_VARIANTS = ("vitkit", "vitkit exact", "vitkit fast")
MATMUL_SHAPE = (3152, 768, 3072)  # ViT-B/16's MLP at batch 16: (16 * 197 tokens, width) @ (width, mlp)


def _timm(config: ViTConfig, name: str) -> nn.Module:
    import timm

    return timm.create_model(name, img_size=config.image_size, num_classes=config.num_classes)


def _transformers(config: ViTConfig, name: str) -> Callable[[Tensor], Tensor]:
    from transformers import ViTConfig as HFConfig
    from transformers import ViTForImageClassification

    hf = HFConfig(
        hidden_size=config.hidden_dim, num_hidden_layers=config.depth, num_attention_heads=config.num_heads,
        intermediate_size=config.mlp_dim, image_size=config.image_size[0], patch_size=config.patch_size[0],
        num_labels=config.num_classes, layer_norm_eps=config.layer_norm_eps, attn_implementation="sdpa",
    )  # fmt: skip
    model = ViTForImageClassification(hf).eval()
    return _Logits(model)


class _Logits(nn.Module):
    """transformers returns an output object: take its logits, as a user would."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> Tensor:
        return self.model(pixel_values=images).logits


def _torchvision(config: ViTConfig, name: str) -> nn.Module:
    from torchvision.models.vision_transformer import VisionTransformer as TorchvisionViT

    return TorchvisionViT(
        image_size=config.image_size[0], patch_size=config.patch_size[0], num_layers=config.depth,
        num_heads=config.num_heads, hidden_dim=config.hidden_dim, mlp_dim=config.mlp_dim,
        num_classes=config.num_classes,
    )  # fmt: skip


def _vit_pytorch(config: ViTConfig, name: str) -> nn.Module:
    from vit_pytorch import ViT

    return ViT(
        image_size=config.image_size[0], patch_size=config.patch_size[0], num_classes=config.num_classes,
        dim=config.hidden_dim, depth=config.depth, heads=config.num_heads, mlp_dim=config.mlp_dim,
    )  # fmt: skip


def _vitkit(config: ViTConfig, name: str, **options: Any) -> nn.Module:
    import vitkit

    torch.manual_seed(0)
    model = VisionTransformer(config)
    return vitkit.optimize(model, **options) if options else model


BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "vitkit": _vitkit,
    "vitkit exact": lambda config, name: _vitkit(config, name, exact=True),
    "vitkit fast": lambda config, name: _vitkit(config, name, exact=False),
    "timm": _timm,
    "transformers": _transformers,
    "torchvision": _torchvision,
    "vit-pytorch": _vit_pytorch,
    "onnxruntime int8": lambda config, name: _vitkit(config, name, onnxruntime=True, int8=True),
}


def build(label: str, name: str, image_size: int) -> nn.Module | None:
    """The model ``label`` at the named size, in eval mode; None (logged) when its library is not installed."""
    config = get_config(name, image_size=image_size)
    try:
        return BUILDERS[label](config, name).eval()
    except ImportError as err:
        logger.warning("%s skipped: %s", label, err)
        return None


def _adamw_settings() -> dict[str, float]:
    """vitkit train's default learning rate and weight decay, given to both libraries' AdamW."""
    from vitkit.training.config import TrainConfig

    defaults = TrainConfig()
    return {"lr": defaults.lr, "weight_decay": defaults.weight_decay}


def _vitkit_adamw(model: nn.Module) -> torch.optim.Optimizer:
    from vitkit.training.optim import build_optimizer

    return build_optimizer(model, **_adamw_settings())


def _timm_adamw(model: nn.Module, **options: Any) -> torch.optim.Optimizer:
    from timm.optim import create_optimizer_v2

    return create_optimizer_v2(model, "adamw", **_adamw_settings(), **options)


ForwardContext = Callable[[nn.Module, Tensor], contextlib.AbstractContextManager]


def no_context(model: nn.Module, images: Tensor) -> contextlib.AbstractContextManager:
    return contextlib.nullcontext()


def vitkit_training_forward(model: nn.Module, images: Tensor) -> contextlib.AbstractContextManager:
    """What `vitkit train` runs a forward pass of ``model`` on ``images`` in."""
    from vitkit.training.loop import forward_work, training_forward

    return training_forward(images.device, forward_work(model, images.shape[0]))


class TrainingRecipe(NamedTuple):
    """How a library's training code trains: the model it builds, its AdamW, what its forward passes run in."""

    model: str
    optimizer: Callable[[nn.Module], torch.optim.Optimizer]
    forward_context: ForwardContext = no_context


# The training comparison's rows, each as its library's training code trains: vitkit's trainer updates with fused
# AdamW and runs its forward as `training_forward` says (GELU outputs recomputed in the backward pass, linear
# layers multiplied by oneDNN); timm's train.py builds AdamW with create_optimizer_v2 (on the CPU torch's
# per-tensor loop). The third row gives timm's model the fused update.
TRAINERS: dict[str, TrainingRecipe] = {
    "vitkit": TrainingRecipe("vitkit", _vitkit_adamw, vitkit_training_forward),
    "timm": TrainingRecipe("timm", _timm_adamw),
    "timm, fused AdamW": TrainingRecipe("timm", lambda model: _timm_adamw(model, fused=True)),
}


def flops_per_image(name: str, image_size: int) -> float:
    """FLOPs of one image through the plain model (2 per multiply-add), counted by torch, not by hand."""
    from torch.utils.flop_counter import FlopCounterMode

    config = get_config(name, image_size=image_size)
    with torch.device("meta"):
        model = VisionTransformer(config)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, config.in_channels, *config.image_size, device="meta"))
    return float(counter.get_total_flops())


def _timed(fn: Callable[[], Any], repeats: int, synchronize: Callable[[], Any] | None = None) -> float:
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    if synchronize is not None:
        synchronize()
    return (time.perf_counter() - start) / repeats


def interleaved_seconds(
    calls: dict[str, Callable[[], Any]],
    rounds: int,
    repeats: int,
    warmup: int = 1,
    inference: bool = True,
    synchronize: Callable[[], Any] | None = None,
) -> dict[str, float]:
    """Median seconds per call of each entry, timed round by round (each round runs every entry once), in
    inference mode unless ``inference`` is False (training steps). ``synchronize`` (e.g. ``torch.cuda.synchronize``)
    waits for work that a call only queued, after the warm-up and after each timing's repeats.

    Each round starts one entry further down the list, so that no entry always runs first or always follows the
    same one (what an entry leaves in the caches and the allocator is then shared out among all of them).
    """
    labels = list(calls)
    with torch.inference_mode(inference):
        for fn in calls.values():
            for _ in range(warmup):
                fn()
        if synchronize is not None:
            synchronize()
        seconds: dict[str, list[float]] = {label: [] for label in calls}
        for round_index in range(rounds):
            start = round_index % len(labels)
            for label in labels[start:] + labels[:start]:
                seconds[label].append(_timed(calls[label], repeats, synchronize))
    return {label: statistics.median(values) for label, values in seconds.items()}


def _matmul_calls() -> tuple[dict[str, Callable[[], Tensor]], float]:
    """The float32 products whose faster one sets the matmul peak, and their FLOPs: ``a @ b`` (MKL on the CPU)
    and, where PyTorch has it, oneDNN's, which ``optimize`` multiplies with (on AMD CPUs the faster of the two)."""
    m, k, n = MATMUL_SHAPE
    a, b = torch.randn(m, k), torch.randn(k, n)
    calls: dict[str, Callable[[], Tensor]] = {"matmul peak": lambda: a @ b}
    if onednn_available():
        weight = b.t().contiguous()  # (out, in), as a linear layer holds it
        calls["matmul peak, oneDNN"] = lambda: linear(a, weight)  # no gradient follows: oneDNN's product alone
    return calls, 2.0 * m * k * n


def _matmul_peak_gflops(
    seconds: dict[str, float], matmul_calls: dict[str, Callable[[], Tensor]], flops: float
) -> float:
    """The matmul peak from the timed ``seconds`` (each product's entry removed from them)."""
    return flops / min(seconds.pop(label) for label in matmul_calls) / 1e9


# What each builder imports, imported before the baseline: peak memory is the model's, not its library's import.
LIBRARY_MODULES = {
    "vitkit": "vitkit.training.loop",  # the training row's forward context (inference rows import no more)
    "timm": "timm",
    "transformers": "transformers.models.vit.modeling_vit",
    "torchvision": "torchvision.models.vision_transformer",
    "vit-pytorch": "vit_pytorch",
    "onnxruntime int8": "onnxruntime",
}


def _memory_kib() -> tuple[int, int]:
    """This process's (resident, peak resident) memory in KiB: /proc/self/status on Linux, else getrusage's peak."""
    try:
        fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
        return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])
    except (OSError, KeyError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // (1024 if sys.platform == "darwin" else 1)
        return peak, peak


M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
UNPOOLED_BYTES = 128 * 1024  # glibc's initial mmap threshold


def _glibc(function: str, *args: int) -> None:
    """Call one of glibc's malloc tuning functions; elsewhere (not glibc) do nothing."""
    with contextlib.suppress(OSError, AttributeError):
        getattr(ctypes.CDLL("libc.so.6"), function)(*args)


def unpooled_malloc() -> None:
    """From now on glibc serves every block of 128 KiB or more straight from the system and gives it back when freed
    (a fixed mmap threshold; elsewhere a no-op), so that resident memory follows the live tensors.

    By default the threshold grows with the blocks freed (up to 32 MiB) and freed heap memory stays resident, so a
    peak depends on the order of past allocations: the same ViT-S/16 training step (batch 32) peaked anywhere from
    2,485 to 2,983 MiB from one fresh process to the next, while with blocks unpooled it peaked at 2,196 to 2,200.
    """
    _glibc("mallopt", M_MMAP_THRESHOLD, UNPOOLED_BYTES)


def _reset_peak() -> None:
    """Hand freed memory back to the system (glibc's malloc_trim), then set the recorded peak resident memory
    (VmHWM) to the current one (Linux >= 4.0; elsewhere a no-op)."""
    gc.collect()
    _glibc("malloc_trim", 0)
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        logger.debug("cannot reset the peak resident memory: it counts from the process start")


def _peak_memory_child(task: tuple) -> dict[int, float] | None:
    """In a fresh process: import, build, run each batch once; report (peak RSS - RSS after imports) in MiB each.

    Before each batch (smallest first) freed memory is handed back and the peak reset: the figure is the running
    model's, with its weights, not building's own passing peak (an ONNX export, ``optimize``'s copy) or the
    allocator's leftovers from it. Blocks of 128 KiB and more are unpooled (:func:`unpooled_malloc`): the figure is
    what the model's tensors need, the same from run to run, not what glibc's heap happened to keep.
    Not getrusage's ru_maxrss on Linux: a spawned child starts with its parent's peak (the kernel keeps the
    forked copy's peak across exec), so under a parent bigger than the model every child reported 0. VmHWM
    is the child's own address space's peak.
    """
    label, name, image_size, batch_sizes, threads, train = task
    unpooled_malloc()
    torch.set_num_threads(threads)
    recipe = TRAINERS[label] if train else None
    model_label = recipe.model if recipe is not None else label
    if model_label in LIBRARY_MODULES:
        with contextlib.suppress(ImportError):  # build() logs it and gives None
            importlib.import_module(LIBRARY_MODULES[model_label])
    before, _ = _memory_kib()
    model = build(model_label, name, image_size)
    if model is None:
        return None
    peaks = {}
    for batch_size in sorted(batch_sizes):
        _reset_peak()
        images = torch.randn(batch_size, 3, image_size, image_size)
        if recipe is not None:  # two steps: from the second on, AdamW's state and the last gradients are held
            step = training_step(model.train(), recipe.optimizer(model), images, forward_context=recipe.forward_context)
            step()
            step()
        else:
            with torch.inference_mode():
                model(images)
        del images
        peaks[batch_size] = (_memory_kib()[1] - before) / 1024
    return peaks


def peak_memories_mib(
    labels: list[str],
    name: str,
    image_size: int,
    batch_sizes: list[int],
    threads: int,
    train: bool = False,
    processes: int = 2,
) -> dict[str, list[float | None]]:
    """Peak memory of each of ``labels`` running each batch (or, with ``train``, two training steps of each of
    :data:`TRAINERS`' labels), in MiB, above its imports.

    Each label gets one fresh process that builds the model and runs the batches, smallest first, the peak reset
    before each: each figure is about the memory that a process running only that batch needs once the model is
    built. ``processes`` of them run at a time (a process's peak is its own, and nothing is timed meanwhile).
    """
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(processes, mp_context=context, max_tasks_per_child=1) as pool:
        futures = {
            label: pool.submit(_peak_memory_child, (label, name, image_size, list(batch_sizes), threads, train))
            for label in labels
        }
        peaks = {label: future.result() for label, future in futures.items()}
    return {label: [None if p is None else p[b] for b in batch_sizes] for label, p in peaks.items()}


def training_step(
    model: nn.Module, optimizer: torch.optim.Optimizer, images: Tensor, autocast: torch.dtype | None = None,
    forward_context: ForwardContext = no_context,
) -> Callable[[], None]:
    """One training step of ``model`` on ``images`` (forward, cross-entropy, backward, ``optimizer``), the forward
    in ``forward_context(model, images)`` and under autocast to ``autocast`` when given."""
    labels = torch.zeros(images.shape[0], dtype=torch.long, device=images.device)

    def step() -> None:
        context = forward_context(model, images)
        with context, torch.autocast(images.device.type, autocast, enabled=autocast is not None):
            loss = nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


@dataclass
class Row:
    """One model in one comparison."""

    label: str
    images_per_s: float
    ratio_to_fastest_peer: float | None = None
    gflops_per_s: float | None = None
    share_of_matmul_peak: float | None = None
    peak_memory_mib: float | None = None


@dataclass
class Comparison:
    """Every model on the same inputs: one model name, image size and batch size (or a training step)."""

    model: str
    image_size: int
    batch_size: int
    kind: str  # "inference" or "training"
    threads: int
    matmul_peak_gflops: float | None
    rows: list[Row] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {**{k: v for k, v in self.__dict__.items() if k != "rows"}, "rows": [r.__dict__ for r in self.rows]}


def with_peer_ratios(comparison: Comparison, labels: list[str] | None = None) -> Comparison:
    """``comparison`` (only the rows of ``labels``, if given) with each row's images/s over the fastest fp32
    peer's among those rows: the scaling table at 224 is the main table's rows for vitkit and timm."""
    rows = [row for row in comparison.rows if labels is None or row.label in labels]
    fastest = max((row.images_per_s for row in rows if row.label in FP32_PEERS), default=None)
    return dataclasses.replace(comparison, rows=[
        dataclasses.replace(row, ratio_to_fastest_peer=row.images_per_s / fastest if fastest else None) for row in rows
    ])  # fmt: skip


def compare_inference(
    name: str,
    image_size: int,
    batch_sizes: list[int],
    labels: list[str],
    rounds: int,
    memory: bool,
    models: dict[str, nn.Module] | None = None,
) -> list[Comparison]:
    """Images/s, ratio to the fastest fp32 peer, GFLOP/s, share of the matmul peak, peak memory."""
    threads = torch.get_num_threads()
    if models is None:
        models = {label: model for label in labels if (model := build(label, name, image_size)) is not None}
    flops = flops_per_image(name, image_size)
    memories = peak_memories_mib(list(models), name, image_size, batch_sizes, threads) if memory else {}
    comparisons = []
    for i, batch_size in enumerate(batch_sizes):
        torch.manual_seed(0)
        images = torch.randn(batch_size, 3, image_size, image_size)
        calls: dict[str, Callable[[], Any]] = {label: (lambda m=model: m(images)) for label, model in models.items()}
        matmul_calls, matmul_flops = _matmul_calls()
        calls.update(matmul_calls)
        repeats = max(1, 2 // batch_size)  # a batch of 1 twice per timing: calls of 0.05 s and up
        seconds = interleaved_seconds(calls, rounds, repeats)
        peak = _matmul_peak_gflops(seconds, matmul_calls, matmul_flops)
        comparison = Comparison(name, image_size, batch_size, "inference", threads, peak)
        for label, s in seconds.items():
            speed = batch_size / s
            gflops = flops * speed / 1e9
            mib = memories[label][i] if memory else None
            comparison.rows.append(Row(label, speed, None, gflops, gflops / peak, mib))
        comparisons.append(with_peer_ratios(comparison))
        logger.info("%s at %d, batch %d: done", name, image_size, batch_size)
    return comparisons


def compare_training(name: str, batch_size: int, rounds: int, memory: bool) -> Comparison:
    """One training step (forward, backward, AdamW) of vitkit and timm on the same batch, each with AdamW as its
    library's training code builds it (:data:`TRAINERS`)."""
    threads = torch.get_num_threads()
    image_size = get_config(name).image_size[0]
    torch.manual_seed(0)
    images = torch.randn(batch_size, 3, image_size, image_size)
    steps = {}
    for label, recipe in TRAINERS.items():
        model = build(recipe.model, name, image_size)
        if model is not None:
            steps[label] = training_step(
                model.train(), recipe.optimizer(model), images, forward_context=recipe.forward_context
            )
    seconds = interleaved_seconds(steps, rounds, 1, inference=False)  # the warm-up call creates AdamW's state
    flops = 3 * flops_per_image(name, image_size)  # backward costs about twice the forward
    matmul_calls, matmul_flops = _matmul_calls()
    peak = _matmul_peak_gflops(interleaved_seconds(matmul_calls, rounds, 3), matmul_calls, matmul_flops)
    comparison = Comparison(name, image_size, batch_size, "training", threads, peak)
    timm_speed = batch_size / seconds["timm"] if "timm" in seconds else None
    memories = peak_memories_mib(list(seconds), name, image_size, [batch_size], threads, train=True) if memory else {}
    for label, median in seconds.items():
        speed = batch_size / median
        mib = memories[label][0] if memory else None
        gflops = flops * speed / 1e9
        comparison.rows.append(Row(label, speed, speed / timm_speed if timm_speed else None, gflops, gflops / peak, mib))
    return comparison
