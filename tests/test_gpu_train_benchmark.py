"""benchmarks/gpu_train.py: its arithmetic (FLOPs by hand, TFLOP/s, MFU, the peak of each GPU) and one run on the
CPU with a tiny image size; no timing is asserted."""

from __future__ import annotations

import json
import runpy
from pathlib import Path
from types import SimpleNamespace

import pytest

import vitkit

pytest.importorskip("timm")
SCRIPT = Path(__file__).parents[1] / "benchmarks" / "gpu_train.py"


def load_script() -> SimpleNamespace:
    return SimpleNamespace(**runpy.run_path(str(SCRIPT)))  # run as a module, not as the main program


def forward_flops_by_hand(config: vitkit.ViTConfig) -> int:
    """2 FLOPs per multiply-add: the patch projection, per block q/k/v, the scores, the weighted sum, the output
    projection and the MLP, then the head on the CLS token."""
    tokens, width = config.num_patches + 1, config.hidden_dim
    patch = 2 * config.num_patches * config.in_channels * config.patch_size[0] * config.patch_size[1] * width
    block = 2 * tokens * width * 3 * width + 2 * 2 * tokens * tokens * width + 2 * tokens * width * width
    block += 2 * 2 * tokens * width * config.mlp_dim
    return patch + config.depth * block + 2 * width * config.num_classes


@pytest.mark.parametrize(
    "device_name, peak",
    [("NVIDIA H100 80GB HBM3", 989.0), ("NVIDIA H100 PCIe", 756.0), ("NVIDIA H200", 989.0),
     ("NVIDIA A100-SXM4-80GB", 312.0), ("NVIDIA GeForce RTX 4090", None)],
)  # fmt: skip
def test_bf16_peak_from_the_device_name(device_name: str, peak: float | None) -> None:
    assert load_script().peak_tflops(device_name) == peak


def test_training_flops_mfu_and_a_cpu_run(tmp_path: Path) -> None:
    script = load_script()
    name, size = "vit_tiny_patch16_224", 32
    flops = script.training_flops_per_image(name, size)
    assert flops == 3 * forward_flops_by_hand(vitkit.get_config(name, image_size=size))
    # ViT-B/16 at 224: the 17.6 G multiply-adds usually quoted, 2 FLOPs each
    assert script.training_flops_per_image("vit_base_patch16_224", 224) / 3 == pytest.approx(35.1e9, rel=0.01)
    figures = script.row("x", seconds=0.5, batch_size=128, flops_per_image=3e9, peak=989.0)
    assert figures["images_per_s"] == 256 and figures["tflops"] == pytest.approx(0.768)
    assert figures["mfu"] == pytest.approx(0.768 / 989)

    json_path = tmp_path / "gpu_train.json"
    script.main(["--device", "cpu", "--model", name, "--image-size", str(size), "--batch-size", "2", "--rounds", "1",
                 "--repeats", "1", "--warmup", "1", "--compile-backend", "none", "--json", str(json_path)])  # fmt: skip
    results = json.loads(json_path.read_text())
    assert [r["label"] for r in results["rows"]] == ["vitkit", "timm"]  # compiled rows: on a GPU
    assert results["peak_bf16_tflops"] is None and results["training_flops_per_image"] == flops
    for r in results["rows"]:
        assert r["images_per_s"] == pytest.approx(2 / r["seconds_per_step"])
        assert r["tflops"] == pytest.approx(r["images_per_s"] * flops / 1e12) and r["mfu"] is None
