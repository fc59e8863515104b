"""``sparse bench WHAT``: benchmarks, each reporting ratios measured side by side in one run.

Registry of benchmark modules (explicit; each exposes ``add_arguments(parser)`` and ``run(args)``).
"""
from __future__ import annotations

import importlib

BENCHES: dict[str, tuple[str, str]] = {
    "masks": ("sparse.bench.masks", "mask methods: time, kept magnitude vs exact, complete tiles"),
    "optimizer": ("sparse.bench.optimizer", "SparseOptimizer overhead per step on MiniLM (CPU)"),
    "blocksparse": ("sparse.bench.blocksparse", "block-sparse matmul / BlockSparseLinear vs dense"),
    "convert": ("sparse.bench.convert", "checkpoint conversion throughput (MB/s)"),
}


def add_arguments(parser):
    sub = parser.add_subparsers(dest="bench", metavar="WHAT")
    sub.required = True
    for name, (module_name, help_text) in BENCHES.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue
        p = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)


def run(args) -> int:  # replaced by the chosen benchmark's run via set_defaults
    raise AssertionError("unreachable")
