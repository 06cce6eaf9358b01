"""The results: one row per model, one comparison per set of inputs, ratios to the fastest peer, and the table."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from vitkit.bench.peers import FP32_PEERS


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
        return dataclasses.asdict(self)


def with_peer_ratios(comparison: Comparison, labels: list[str] | None = None) -> Comparison:
    """``comparison`` (only the rows of ``labels``, if given) with each row's images/s over the fastest fp32
    peer's among those rows: the scaling table at 224 is the main table's rows for vitkit and timm."""
    rows = [row for row in comparison.rows if labels is None or row.label in labels]
    fastest = max((row.images_per_s for row in rows if row.label in FP32_PEERS), default=None)
    return dataclasses.replace(comparison, rows=[
        dataclasses.replace(row, ratio_to_fastest_peer=row.images_per_s / fastest if fastest else None) for row in rows
    ])  # fmt: skip


def _cell(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def format_table(comparison: Comparison) -> str:
    """The comparison as a text table: a heading line, then one line per library."""
    c = comparison
    peak = _cell(c.matmul_peak_gflops, ".0f")
    ratio_name = "vs timm" if c.kind == "training" else "vs fastest peer"
    lines = [
        f"{c.model} {c.kind}, {c.image_size}px, batch {c.batch_size}, {c.threads} threads (matmul peak {peak} GFLOP/s)",
        f"  {'library':18s} {'images/s':>9s} {ratio_name:>16s} {'GFLOP/s':>8s} {'of peak':>8s} {'peak MiB':>9s}",
    ]
    for row in c.rows:
        share = None if row.share_of_matmul_peak is None else 100 * row.share_of_matmul_peak
        lines.append(f"  {row.label:18s} {row.images_per_s:9.2f} {_cell(row.ratio_to_fastest_peer, '.2f'):>15s}x "
                     f"{_cell(row.gflops_per_s, '.0f'):>8s} {_cell(share, '.0f'):>7s}% "
                     f"{_cell(row.peak_memory_mib, '.0f'):>9s}")  # fmt: skip
    return "\n".join(lines)
