"""The side-by-side harness behind `vitkit bench` and ``benchmarks/``: every model in one process, same threads,
same inputs, rounds interleaved.

``peers`` builds the models (vitkit and the peer libraries) and their training steps, ``timing`` times them
round by round, ``memory`` measures peak memory in child processes, ``report`` holds the result rows and tables,
``compare`` puts them together. Names are imported on first use (PEP 562): torch loads when one is used.
"""

from __future__ import annotations

from vitkit.lazy import lazy_exports

# public name -> module that defines it
_EXPORTS = {
    **dict.fromkeys(("compare_inference", "compare_training"), "vitkit.bench.compare"),
    "peak_memories_mib": "vitkit.bench.memory",
    **dict.fromkeys(
        ("FP32_PEERS", "TRAINERS", "build", "no_context", "training_step", "vitkit_training_forward"),
        "vitkit.bench.peers",
    ),
    **dict.fromkeys(("Comparison", "Row", "format_table", "with_peer_ratios"), "vitkit.bench.report"),
    **dict.fromkeys(("flops_per_image", "interleaved_seconds"), "vitkit.bench.timing"),
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
