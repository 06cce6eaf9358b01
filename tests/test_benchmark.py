"""Peak memory of `vitkit bench`: a real measurement, also from a process that is bigger than the model."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest
import torch

from vitkit.bench import compare, memory, peers, report, timing
from vitkit.model import VisionTransformer, get_config
from vitkit.optimize.onednn import onednn_available

IMAGE_MIB = 3 * 224 * 224 * 4 / 2**20  # one float32 224x224 RGB image


def test_peak_memory_grows_with_the_batch_even_under_a_big_parent() -> None:
    # A parent holding 1 GiB, as the benchmark script does after building every model: the children's
    # peaks used to start at the parent's and every row read 0. The peer is torchvision, which vitkit's own
    # model imports anyway: each child imports no more than it must.
    ballast = torch.ones(2**28)  # 1 GiB, written, so resident
    memories = memory.peak_memories_mib(["vitkit", "torchvision"], "vit_tiny_patch16_224", 224, [1, 16], threads=1)
    assert ballast.sum().item() == 2**28
    weights_mib = sum(p.numel() for p in VisionTransformer(get_config("vit_tiny_patch16_224")).parameters()) * 4 / 2**20
    for label, (one, sixteen) in memories.items():  # two processes at a time: each peak is still its own
        assert one is not None and sixteen is not None, label
        assert one >= weights_mib, label  # the model's weights are resident at the peak
        assert sixteen - one >= 15 * IMAGE_MIB, label  # at least the 15 more input images, resident throughout


def test_a_subset_of_rows_is_compared_with_its_own_fastest_peer() -> None:
    comparison = report.Comparison("vit_small_patch16_224", 224, 1, "inference", 2, 100.0, [
        report.Row("vitkit", 10.0), report.Row("timm", 5.0), report.Row("transformers", 20.0),
    ])  # fmt: skip
    whole = report.with_peer_ratios(comparison)
    assert [row.ratio_to_fastest_peer for row in whole.rows] == [0.5, 0.25, 1.0]
    subset = report.with_peer_ratios(comparison, ["vitkit", "timm"])
    assert [(row.label, row.ratio_to_fastest_peer) for row in subset.rows] == [("vitkit", 2.0), ("timm", 1.0)]
    assert [row.ratio_to_fastest_peer for row in comparison.rows] == [
        None,
        None,
        None,
    ]  # the original is left as it was


def test_each_round_starts_with_another_entry() -> None:
    order: list[str] = []
    calls = {label: (lambda label=label: order.append(label)) for label in "abc"}
    seconds = timing.interleaved_seconds(calls, rounds=3, repeats=1, warmup=0)
    assert order == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]  # every entry once in each position
    assert set(seconds) == {"a", "b", "c"} and all(s >= 0 for s in seconds.values())


def test_training_steps_are_timed_with_gradients() -> None:
    weight = torch.ones(3, requires_grad=True)
    grads: list[torch.Tensor] = []

    def step() -> None:
        (weight * 2).sum().backward()  # fails in inference mode: no graph to go back through
        grads.append(weight.grad.clone())

    timing.interleaved_seconds({"step": step}, rounds=2, repeats=1, inference=False)
    assert len(grads) == 3 and torch.equal(grads[-1], torch.full((3,), 6.0))  # warm-up + 2 rounds, accumulated


def test_training_comparison_is_against_timm() -> None:
    pytest.importorskip("timm")
    comparison = compare.compare_training("vit_tiny_patch16_224", batch_size=2, rounds=1, memory=False)
    rows = {row.label: row for row in comparison.rows}
    assert set(rows) == {"vitkit", "timm", "timm, fused AdamW"} and comparison.kind == "training"
    assert rows["timm"].ratio_to_fastest_peer == pytest.approx(1.0)
    for label in ("vitkit", "timm, fused AdamW"):
        assert rows[label].ratio_to_fastest_peer == pytest.approx(rows[label].images_per_s / rows["timm"].images_per_s)


def test_each_training_row_steps_adamw_as_its_library_trains() -> None:
    pytest.importorskip("timm")
    optimizers = {}
    for label, recipe in peers.TRAINERS.items():
        model = peers.build(recipe.model, "vit_tiny_patch16_224", 224)
        optimizers[label] = (model, recipe.optimizer(model))
    for label, (model, optimizer) in optimizers.items():
        assert isinstance(optimizer, torch.optim.AdamW)
        assert optimizer.defaults["lr"] == 1e-3  # vitkit train's default, given to both
        decayed = {id(p) for group in optimizer.param_groups if group["weight_decay"] == 0.05 for p in group["params"]}
        # Both libraries' recipes decay the weight matrices and nothing of one dimension (biases, norms).
        assert decayed and all(p.ndim > 1 for p in model.parameters() if id(p) in decayed), label
        assert all(id(p) in decayed for p in model.parameters() if p.ndim == 2 and p.shape[0] > 1000), label
    # vitkit's trainer updates in one fused kernel; timm's create_optimizer_v2 leaves torch's default (a loop on
    # the CPU); the third row gives timm's model the fused update.
    assert [optimizers[label][1].defaults["fused"] for label in peers.TRAINERS] == [True, None, True]


def test_vitkits_training_row_runs_its_forward_as_vitkit_train_does(monkeypatch) -> None:
    from vitkit.training import cpu_kernels

    entered: list[tuple[torch.device, int]] = []
    choose = cpu_kernels.choose

    def recorded(setting: str, device: torch.device, model: VisionTransformer, images: int) -> cpu_kernels.CpuKernels:
        assert setting == "auto"  # vitkit train's default
        entered.append((device, cpu_kernels.forward_work(model, images)))
        return choose(setting, device, model, images)

    monkeypatch.setattr(cpu_kernels, "choose", recorded)
    model = VisionTransformer(get_config("vit_tiny_patch16_224"))
    images = torch.zeros(3, 3, 224, 224)
    for recipe in peers.TRAINERS.values():
        with recipe.forward_context(model, images):
            pass
    assert entered == [(torch.device("cpu"), 3 * 197 * 192)]  # vitkit's row only: images x tokens x width


def test_synchronize_waits_after_the_warm_up_and_after_each_timing() -> None:
    events: list[str] = []
    calls = {label: (lambda label=label: events.append(label)) for label in "ab"}
    timing.interleaved_seconds(calls, rounds=2, repeats=2, synchronize=lambda: events.append("sync"))
    # warm-up a, b, then each timing's two calls followed by one wait; the second round starts with b
    assert events == ["a", "b", "sync", "a", "a", "sync", "b", "b", "sync", "b", "b", "sync", "a", "a", "sync"]


def test_training_step_runs_its_forward_under_the_autocast_asked_for() -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    dtypes: list[torch.dtype] = []
    model.register_forward_hook(lambda module, args, out: dtypes.append(out.dtype))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before = model.weight.detach().clone()
    peers.training_step(model, optimizer, torch.randn(2, 4))()
    peers.training_step(model, optimizer, torch.randn(2, 4), autocast=torch.bfloat16)()
    assert dtypes == [torch.float32, torch.bfloat16]
    entered: list[bool] = []

    @contextlib.contextmanager
    def context(stepped: torch.nn.Module, images: torch.Tensor) -> Iterator[None]:
        entered.append(torch.is_grad_enabled() and stepped is model and images.shape == (2, 4))
        yield

    peers.training_step(model, optimizer, torch.randn(2, 4), forward_context=context)()
    assert entered == [True] and len(dtypes) == 3
    assert not torch.equal(model.weight, before)  # the optimizer stepped


RESIDENT_AFTER_TWO_FREED_BLOCKS = """
import torch
from vitkit.bench import memory
{setup}
for _ in range(2):  # glibc mmaps the first 20 MiB block, then raises its threshold and keeps the second on its heap
    block = torch.ones(5 * 2**20)
    del block
print(round(memory.memory_kib()[0] / 1024))
"""


def test_unpooled_malloc_gives_freed_blocks_back() -> None:
    codes = [RESIDENT_AFTER_TWO_FREED_BLOCKS.format(setup=setup) for setup in ("", "memory.unpooled_malloc()")]
    env = {**os.environ, memory.HUGE_PAGES_ENV: "0"}  # as the measuring children run: 2 MiB blocks skip the pool
    processes = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)
                 for code in codes]  # fmt: skip
    pooled, unpooled = (int(process.communicate(timeout=120)[0]) for process in processes)  # side by side
    assert [process.returncode for process in processes] == [0, 0]
    assert pooled - unpooled >= 15  # the second 20 MiB block stayed resident only with glibc's pooling


def test_measuring_children_start_without_huge_pages_and_the_parent_keeps_its_setting(monkeypatch) -> None:
    monkeypatch.setenv(memory.HUGE_PAGES_ENV, "1")  # as under the `vitkit` command
    show = f"import os; print(os.environ.get('{memory.HUGE_PAGES_ENV}'))"
    with memory._children_without_huge_pages():
        seen = subprocess.run([sys.executable, "-c", show], capture_output=True, text=True, check=True).stdout
    assert seen.strip() == "0" and os.environ[memory.HUGE_PAGES_ENV] == "1"


def test_matmul_peak_is_the_faster_of_the_products_and_each_computes_a_times_b() -> None:
    calls, flops = timing.matmul_calls()
    m, k, n = timing.MATMUL_SHAPE
    assert flops == 2 * m * k * n
    products = [call() for call in calls.values()]
    assert len(products) == 1 + bool(onednn_available())
    for product in products[1:]:
        torch.testing.assert_close(product, products[0], atol=1e-3, rtol=1e-4)
    seconds = {label: 2.0 + i for i, label in enumerate(calls)} | {"vitkit": 7.0}
    assert timing.matmul_peak_gflops(seconds, calls, 4e9) == 2.0  # 4 GFLOP in the faster product's 2 s
    assert seconds == {"vitkit": 7.0}
