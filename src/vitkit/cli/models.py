"""`vitkit models`: the named configurations with their sizes and parameter counts."""

from __future__ import annotations

import argparse

from vitkit.cli.common import format_count


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "models", help="list the named model configurations", description="List the named models and parameter counts."
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """One row per named model (parameters counted on the meta device: no memory)."""
    import vitkit

    rows = [("name", "params", "exact", "image", "patch", "dim", "depth", "heads", "channels")]
    for name in vitkit.list_models():
        config = vitkit.get_config(name)
        count = vitkit.count_parameters(name)
        rows.append(
            (
                name,
                format_count(count),
                f"{count:,}",
                "x".join(map(str, config.image_size)),
                "x".join(map(str, config.patch_size)),
                str(config.hidden_dim),
                str(config.depth),
                str(config.num_heads),
                str(config.in_channels),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = [row[0].ljust(widths[0])] + [cell.rjust(width) for cell, width in zip(row[1:], widths[1:])]
        print("  ".join(cells).rstrip())
    return 0
