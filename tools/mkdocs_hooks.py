"""MkDocs hooks: the benchmark pages (and the explain guide's table), generated from ``benchmarks/results/*.json``
at every build.

The pages exist only in the built site (``File.generated``), so there is nothing under ``docs/`` to edit by hand
and nothing to keep in step with the results.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

sys.path.insert(0, str(Path(__file__).parent))  # benchmark_tables.py sits beside this file

import benchmark_tables  # noqa: E402


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    """Fill the explain guide's faithfulness table and the fine-tuning guide's MAE tables from their results files."""
    generated = (
        (benchmark_tables.FAITHFULNESS_MARKER, benchmark_tables.faithfulness_table),
        (benchmark_tables.MAE_MARKER, benchmark_tables.mae_table),
        (benchmark_tables.MAE_BUDGET_MARKER, benchmark_tables.mae_budget_table),
    )
    for marker, table in generated:
        if marker in markdown:  # each table is read from its results file only where a page asks for it
            markdown = markdown.replace(marker, table())
    return markdown


def on_files(files: Files, config: Any) -> Files:
    """Add one page per results file, their index and their figures under ``benchmarks/``."""
    for path, markdown in benchmark_tables.results_pages().items():
        files.append(File.generated(config, path, content=markdown))
    for path, figure in benchmark_tables.results_figures().items():
        files.append(File.generated(config, path, abs_src_path=str(figure)))
    return files
