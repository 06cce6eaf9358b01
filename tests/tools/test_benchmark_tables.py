"""tools/benchmark_tables.py: the README's speed table is the one generated from benchmarks/results/speed.json, and
the tables it renders match hand-written ones."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_SPEC = importlib.util.spec_from_file_location("benchmark_tables", ROOT / "tools" / "benchmark_tables.py")
benchmark_tables = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(benchmark_tables)

SPEED = {
    "machine": {"cpu": "Test CPU", "threads": 2},
    "comparisons": [
        {"model": "vit_base_patch16_224", "image_size": 224, "batch_size": 1, "kind": "inference", "threads": 2,
         "rows": [{"label": "vitkit", "images_per_s": 3.5, "ratio_to_fastest_peer": 1.25, "peak_memory_mib": 360.4},
                  {"label": "timm", "images_per_s": 2.8, "ratio_to_fastest_peer": 1.0, "peak_memory_mib": None}]},
        {"model": "vit_small_patch16_224", "image_size": 384, "batch_size": 1, "kind": "inference", "threads": 2,
         "rows": [{"label": "vitkit", "images_per_s": 9.0, "ratio_to_fastest_peer": 1.0}]},
        {"model": "vit_small_patch16_224", "image_size": 224, "batch_size": 32, "kind": "training", "threads": 2,
         "rows": [{"label": "timm", "images_per_s": 4.0, "ratio_to_fastest_peer": 1.0},
                  {"label": "vitkit", "images_per_s": 5.0, "ratio_to_fastest_peer": 1.25}]},
    ],
}  # fmt: skip


def test_readme_speed_table_is_generated_from_the_results() -> None:
    readme = (ROOT / "README.md").read_text()
    assert benchmark_tables.README_START in readme
    assert benchmark_tables.update_readme(readme) == readme, "run: python tools/benchmark_tables.py readme"


def test_readme_table_has_one_column_per_chosen_comparison() -> None:
    # ViT-B/16 at 224 and the training step are chosen; ViT-S/16 at 384 is not. Rows in order of first appearance.
    expected = (
        "| library | ViT-B/16, batch 1 | ViT-S/16 training step, batch 32 |\n"
        "|---|---|---|\n"
        "| vitkit | 3.50 (1.25x) | 5.00 (1.25x) |\n"
        "| timm | 2.80 (1.00x) | 4.00 (1.00x) |\n\n"
        "Images/s on Test CPU, 2 threads (in brackets: against the fastest float32 peer; for the training step, "
        "against timm). Generated from `benchmarks/results/speed.json`."
    )
    assert benchmark_tables.readme_speed_table(SPEED) == expected


def test_update_readme_replaces_only_the_marked_block(tmp_path: Path) -> None:
    (tmp_path / "speed.json").write_text(json.dumps(SPEED))
    text = f"before\n{benchmark_tables.README_START}\nstale table\n{benchmark_tables.README_END}\nafter\n"
    updated = benchmark_tables.update_readme(text, tmp_path)
    assert updated.startswith("before\n") and updated.endswith("\nafter\n")
    assert "stale table" not in updated and "| vitkit | 3.50 (1.25x) |" in updated
    with pytest.raises(ValueError, match="speed-table markers"):
        benchmark_tables.update_readme("no markers here", tmp_path)


def test_results_pages_render_every_results_file(tmp_path: Path) -> None:
    (tmp_path / "speed.json").write_text(json.dumps(SPEED))
    (tmp_path / "new_study.json").write_text(json.dumps({"command": "python x.py", "results": [
        {"option": "a", "agreement_held_out": 0.99888, "speedup": 3.2336},
        {"option": "b", "agreement_held_out": 1.0, "speedup": 1.0},
    ]}))  # fmt: skip
    (tmp_path / "speed.png").write_bytes(b"png")
    (tmp_path / "unrelated.png").write_bytes(b"png")
    pages = benchmark_tables.results_pages(tmp_path)
    assert benchmark_tables.results_figures(tmp_path) == {"benchmarks/speed.png": tmp_path / "speed.png"}
    assert "](speed.png)" in pages["benchmarks/speed.md"] and ".png)" not in pages["benchmarks/new_study.md"]
    assert sorted(pages) == ["benchmarks/index.md", "benchmarks/new_study.md", "benchmarks/speed.md"]
    assert "(new_study.md)" in pages["benchmarks/index.md"] and "(speed.md)" in pages["benchmarks/index.md"]
    assert (
        "| option | agreement held out | speedup |\n|---|---|---|\n| a | 99.89 % | 3.23x |\n| b | 100.00 % | 1.00x |"
        in pages["benchmarks/new_study.md"]
    )
    assert "Measured with `python x.py`." in pages["benchmarks/new_study.md"]
    # A column that no row of a comparison has (GFLOP/s) is left out; a missing value is an empty cell.
    assert (
        "### ViT-B/16 at 224, batch 1, inference (2 CPU threads)\n\n| library | images/s | ratio | peak MiB |\n"
        "|---|---|---|---|\n| vitkit | 3.50 | 1.25x | 360 |\n| timm | 2.80 | 1.00x |  |" in pages["benchmarks/speed.md"]
    )


def test_small_numbers_keep_their_digits_and_accuracies_read_as_percentages() -> None:
    assert [benchmark_tables.format_number(v) for v in (0.003, 4.8e-07, 0.0, 0.25, 12.5, 1234.0)] == [
        "0.003", "4.8e-07", "0.00", "0.25", "12.5", "1,234"
    ]  # fmt: skip
    assert benchmark_tables.format_cell("accuracy_lora", 0.9722) == "97.22 %"


def test_the_mae_table_shows_each_seed_the_mean_and_the_verdict(tmp_path: Path) -> None:
    def run(seed: int, mae: float, same: float, stem: float) -> dict:
        return {"seed": seed, "accuracy_mae_fine_tuned": mae, "accuracy_scratch_vit_digits": same,
                "accuracy_scratch": stem}  # fmt: skip

    record = {"settings": {"pretrain_epochs": 100, "fine_tune_epochs": 50},
              "summary": {"seeds": 2, "accuracy_mae_fine_tuned": 0.9, "accuracy_scratch_vit_digits": 0.85,
                          "accuracy_scratch": 0.95, "gain_over_vit_digits_points": 5.0, "gain_points": -5.0,
                          "bar_met": True},
              "runs": [run(0, 0.875, 0.85, 0.95), run(1, 0.925, 0.85, 0.95)]}  # fmt: skip
    (tmp_path / "mae.json").write_text(json.dumps(record))
    table, verdict = benchmark_tables.mae_table(tmp_path).split("\n\n")
    assert table.splitlines()[0] == (
        "| split | MAE 100 + fine-tuning 50 epochs | vit_digits from scratch, 150 epochs "
        "| vit_digits_stem from scratch, 150 epochs |"
    )
    assert table.splitlines()[2:] == [
        "| seed 0 | 87.50 % | 85.00 % | 95.00 % |",
        "| seed 1 | 92.50 % | 85.00 % | 95.00 % |",
        "| **mean of 2** | **90.00 %** | **85.00 %** | **95.00 %** |",
    ]
    assert verdict == (
        "MAE over vit_digits from scratch: +5.00 points (bar: +3, met); over vit_digits_stem: -5.00 points."
    )


def test_the_mae_budget_table_sets_each_scratch_budget_against_its_most_tried_mae_candidate(tmp_path: Path) -> None:
    def row(name: str, seed: int, pre: int, ft: int, accuracy: float) -> dict:
        return {"candidate": name, "seed": seed, "pretrain_epochs": pre, "fine_tune_epochs": ft,
                "selection_accuracy": accuracy}  # fmt: skip

    candidates = [
        row("scratch", 0, 0, 100, 0.80), row("scratch", 1, 0, 100, 0.70), row("scratch", 0, 0, 500, 0.96),
        row("p30", 0, 30, 70, 0.85), row("p30", 1, 30, 70, 0.75),  # two seeds: chosen at 100 epochs
        row("p60", 0, 60, 40, 0.95),  # better on seed 0, but scored on one seed only
        row("p400", 0, 400, 100, 0.93),
        row("p200", 0, 200, 100, 0.99),  # no scratch run of 300 epochs to set it against
    ]  # fmt: skip
    (tmp_path / "mae_search.json").write_text(json.dumps({"candidates": candidates}))
    assert benchmark_tables.mae_budget_table(tmp_path).splitlines()[2:] == [
        "| 100 | `p30` | 0, 1 | 80.00 % | 75.00 % | +5.00 |",
        "| 500 | `p400` | 0 | 93.00 % | 96.00 % | -3.00 |",
    ]


def test_faithfulness_tables_show_the_models_the_curve_ends_and_the_gains(tmp_path: Path) -> None:
    def row(weights: str, name: str, gain: float, **more: float) -> dict:
        return {"model": "m", "weights": weights, "baseline": "rise", "map": name, "images": 10,
                "deletion_auc": 0.25, "insertion_auc": 0.5, "deletion_gain": gain, "deletion_gain_se": 0.01,
                "insertion_gain": -gain, "insertion_gain_se": 0.02, "probability_whole": 0.9,
                "probability_all_deleted": 0.1, "probability_insertion_start": 0.3, **more}  # fmt: skip

    record = {"models": [{"model": "m", "held_out_images": 10, "held_out_accuracy": 0.875}],
              "results": [row("trained", "rollout", 0.05), row("trained", "random order", 0.0),
                          row("random init", "rollout", 0.002, inits=2),
                          row("random init", "random order", 0.0, inits=2)],
              "random_inits": [row("random init 0", "rollout", 0.001, init_seed=0),
                               row("random init 1", "rollout", 0.003, init_seed=1),
                               row("random init 1", "random order", 0.0, init_seed=1)]}  # fmt: skip
    (tmp_path / "faithfulness.json").write_text(json.dumps(record))
    models, ends, scores, inits = benchmark_tables.faithfulness_table(tmp_path).split("\n\n")
    assert models.splitlines()[2] == "| m | 10 | 87.5 % |"
    assert ends.splitlines()[2:] == ["| m | rise | 0.900 | 0.100 | 0.300 |"]  # the trained model's only
    assert (
        scores.splitlines()[2]
        == "| m | trained | rise | rollout | 10 | 0.250 | +0.050 ± 0.010 | 0.500 | -0.050 ± 0.020 |"
    )
    assert scores.splitlines()[3].endswith("| - | 0.500 | - |")  # the random order has no gain over itself
    assert scores.splitlines()[4].startswith("| m | random init (2 inits) | rise | rollout |")
    assert inits.splitlines() == [
        "| model | map | gain | init 0 | init 1 | mean ± SE across inits |",
        "|---|---|---|---|---|---|",
        "| m | rollout | deletion | +0.0010 ± 0.0100 | +0.0030 ± 0.0100 | +0.0020 ± 0.0100 |",
        "| m | rollout | insertion | -0.0010 ± 0.0200 | -0.0030 ± 0.0200 | -0.0020 ± 0.0200 |",
    ]  # the random order, which has no gain, has no row


def test_the_image_folder_page_shows_each_start_against_the_script_and_each_pipeline_against_timm(
    tmp_path: Path,
) -> None:
    startup = [{"files": 20000, "imagefolder_script_s": 4.0, "vitkit_first_start_s": 8.04, "first_start_ratio": 2.01,
                "vitkit_second_start_s": 4.84, "second_start_ratio": 1.21}]  # fmt: skip
    measured = {"image_size": 224, "batch_size": 64, "workers": 2, "batches": 24, "rounds": 7,
                "rows": [{"label": "vitkit", "images_per_s": 905.2, "ratio_to_timm": 1.7275},
                         {"label": "timm", "images_per_s": 524.0, "ratio_to_timm": 1.0}]}  # fmt: skip
    (tmp_path / "data.json").write_text(json.dumps({"startup": startup, "training_input": measured}))
    page = benchmark_tables.results_pages(tmp_path)["benchmarks/data.md"]
    assert "| 20,000 | 4.0 s | 8.0 s (2.01x) | — | 4.8 s (1.21x) |" in page  # no cached-folder first start measured
    assert "the median of 7 interleaved rounds of 24 batches" in page
    assert "| vitkit | 905 | 1.73x |\n| timm | 524 | 1.00x |" in page
