"""benchmarks/gpu_vs_peers.py runs end to end (on the CPU here: the same code, no GPU needed) and reports every
precision, with ratios that are images/s over the fastest peer's."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

pytest.importorskip("timm")
SCRIPT = Path(__file__).parents[1] / "benchmarks" / "gpu_vs_peers.py"


def load_script():
    spec = importlib.util.spec_from_file_location("gpu_vs_peers", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_benchmark_runs_every_precision_on_the_cpu(tmp_path: Path) -> None:
    script = load_script()
    tiny = "vit_tiny_patch16_224"
    json_path, markdown_path = tmp_path / "gpu.json", tmp_path / "gpu.md"
    # 32 px: 4 patches, the code that runs at 224 px for a sixtieth of the work
    script.main(["--device", "cpu", "--models", tiny, "--image-size", "32", "--batch-sizes", "1", "--rounds", "1",
                 "--compile-models", "--train-models", tiny, "--train-batch-size", "2", "--json", str(json_path),
                 "--markdown", str(markdown_path)])  # fmt: skip
    results = json.loads(json_path.read_text())
    assert {c["image_size"] for c in results["comparisons"]} == {32}
    kinds = [c["kind"] for c in results["comparisons"]]
    assert kinds == ["fp32", "bf16 autocast", "bf16 weights", "training, fp32", "training, bf16 autocast"]
    for comparison in results["comparisons"]:
        rows = {row["label"]: row for row in comparison["rows"]}
        reference = "timm" if comparison["kind"].startswith("training") else None
        fastest = rows[reference]["images_per_s"] if reference else max(
            row["images_per_s"] for label, row in rows.items() if label in script.bench.FP32_PEERS
        )  # fmt: skip
        for row in rows.values():
            assert row["ratio_to_fastest_peer"] == pytest.approx(row["images_per_s"] / fastest)
            assert row["peak_memory_mib"] is None  # GPU memory only
    labels = {row["label"] for c in results["comparisons"] for row in c["rows"]}
    assert {"vitkit", "vitkit exact", "vitkit, math attention", "vitkit bf16", "timm"} <= labels
    table = markdown_path.read_text()
    assert table.count("\n| ViT-Ti/16 |") == sum(len(c["rows"]) for c in results["comparisons"])
