"""The production serving guide: its `docker run` line fits the Dockerfile, and its load table is the one
generated from benchmarks/results/serve.json (no figure typed by hand)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "guides" / "serving-production.md"


def test_the_guide_runs_the_image_with_the_model_read_only_and_a_key() -> None:
    guide = GUIDE.read_text(encoding="utf-8")
    (command,) = re.findall(r"docker run [^`]*?vitkit-serve[^\n]*", guide.replace("\\\n", " "))
    assert re.search(r"-v \S+:/model:ro", command), command
    assert "--api-key-file" in command and re.search(r"-v \S+:/run/secrets/\S+:ro", command)
    assert "--stop-timeout" in command, "docker stop must wait longer than the drain"


def test_the_load_table_is_generated_from_serve_json() -> None:
    spec = importlib.util.spec_from_file_location("serve_load", ROOT / "benchmarks" / "serve_load.py")
    assert spec is not None and spec.loader is not None
    serve_load = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(serve_load)
    guide = GUIDE.read_text(encoding="utf-8")
    table = guide.split(serve_load.TABLE_START, 1)[1].split(serve_load.TABLE_END, 1)[0]
    results = serve_load.read_json(serve_load.RESULTS)
    assert table.strip() == serve_load.markdown(results).strip(), "run benchmarks/serve_load.py --table-only"
    overload = {row["model"]: row for row in results["overload"]}
    assert set(overload) == {"vit_digits", "ViT-Ti/16"} and all(row["max_queue"] == 64 for row in overload.values())
