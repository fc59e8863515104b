"""``sparse bench WHAT``: benchmarks, each reporting ratios measured side by side in one run.

Registry of benchmark modules (explicit; each exposes ``add_arguments(parser)`` and ``run(args)``).
"""
from __future__ import annotations

BENCHES: dict[str, tuple[str, str]] = {
    "masks": ("sparse.bench.masks", "mask methods: time, kept magnitude vs exact, complete tiles"),
    "optimizer": ("sparse.bench.optimizer", "SparseOptimizer overhead per step on MiniLM (CPU)"),
    "blocksparse": ("sparse.bench.blocksparse", "block-sparse matmul / BlockSparseLinear vs dense"),
    "convert": ("sparse.bench.convert", "checkpoint conversion throughput (MB/s)"),
}


def add_arguments(parser):
    from sparse.cli import add_registered

    add_registered(parser, "bench", "WHAT", BENCHES)


def run(args) -> int:  # replaced by the chosen benchmark's run via set_defaults
    raise AssertionError("unreachable")
