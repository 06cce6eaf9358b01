"""The side-by-side speed benchmark of the README: `vitkit bench --fast`, its JSON, and a plot of it.

Runs the real command in this process (every peer installed, rounds interleaved; about 8 minutes on
2 cores with the defaults), writes benchmarks/results/speed.json, the table speed.md and the plot speed.png:
images/s relative to the fastest fp32 peer, for each comparison. Extra flags go to `vitkit bench`
(for a short run: --quick).

    python benchmarks/speed_vs_peers.py [--plot-only] [vitkit bench flags...]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from matplotlib.figure import Figure

from vitkit import cli

RESULTS = Path(__file__).parent / "results"


def plot(results: dict, path: Path) -> None:
    """One group of bars per comparison: each library's images/s over the fastest fp32 peer's (1.0 = tie)."""
    comparisons, seen = [], set()
    for c in results["comparisons"]:  # inference at 224; the scaling rows' ViT-S/16 batch 1 repeats the main one
        if c["kind"] == "inference" and c["image_size"] == 224 and (c["model"], c["batch_size"]) not in seen:
            seen.add((c["model"], c["batch_size"]))
            comparisons.append(c)
    labels = list(dict.fromkeys(row["label"] for c in comparisons for row in c["rows"]))
    figure = Figure(figsize=(11, 4.5), layout="constrained")
    axes = figure.subplots()
    width = 0.8 / len(labels)
    for i, label in enumerate(labels):
        xs, ys = [], []
        for j, comparison in enumerate(comparisons):
            row = next((r for r in comparison["rows"] if r["label"] == label), None)
            if row is not None and row["ratio_to_fastest_peer"] is not None:
                xs.append(j + (i - (len(labels) - 1) / 2) * width)
                ys.append(row["ratio_to_fastest_peer"])
        axes.bar(xs, ys, width, label=label)
    axes.axhline(1.0, color="black", linewidth=0.8)
    axes.set_xticks(range(len(comparisons)))
    axes.set_xticklabels([f"{c['model'].split('_patch')[0]}/16\nbatch {c['batch_size']}" for c in comparisons])
    axes.set_ylabel("images/s ÷ fastest fp32 peer")
    axes.set_title(
        f"{results['machine']['cpu']}, {results['machine']['threads']} threads, torch {results['machine']['torch']}"
    )
    axes.legend(ncols=4, fontsize="small")
    figure.savefig(path, dpi=110)


def markdown(results: dict) -> str:
    """The README's table: one line per library and comparison."""
    machine = results["machine"]
    lines = [f"{machine['cpu']}, {machine['threads']} threads, torch {machine['torch']}", "",
             "| model | image | batch | library | images/s | vs fastest fp32 peer (training: vs timm) | GFLOP/s | "
             "of matmul peak | peak MiB |", "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for c in results["comparisons"]:
        model = c["model"].replace("vit_small_patch16_224", "ViT-S/16").replace("vit_base_patch16_224", "ViT-B/16")
        if c["kind"] == "training":
            model += " training step"
        for row in c["rows"]:
            ratio = "-" if row["ratio_to_fastest_peer"] is None else f"{row['ratio_to_fastest_peer']:.2f}x"
            memory = "-" if row["peak_memory_mib"] is None else f"{row['peak_memory_mib']:.0f}"
            lines.append(
                f"| {model} | {c['image_size']} | {c['batch_size']} | {row['label']} | {row['images_per_s']:.2f} | "
                f"{ratio} | {row['gflops_per_s']:.0f} | {100 * row['share_of_matmul_peak']:.0f}% | {memory} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plot-only", action="store_true", help="redraw the plot from the existing JSON")
    args, bench_flags = parser.parse_known_args()
    RESULTS.mkdir(exist_ok=True)
    json_path = RESULTS / "speed.json"
    if not args.plot_only:
        code = cli.main(["bench", "--fast", "--json", str(json_path), *bench_flags])
        if code:
            raise SystemExit(code)
    results = json.loads(json_path.read_text())
    plot(results, RESULTS / "speed.png")
    (RESULTS / "speed.md").write_text(markdown(results), encoding="utf-8")
    print(f"plot: {RESULTS / 'speed.png'}, table: {RESULTS / 'speed.md'}")


if __name__ == "__main__":
    main()
