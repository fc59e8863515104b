"""``sparse bench NAME``: every benchmark, reachable here and only here.

The registry is explicit (an unknown NAME is an argparse error). Each module exposes ``DESCRIPTION``
(the line ``sparse bench --help`` shows), ``add_arguments(parser)`` and ``run(args) -> int``, and
shares timing, tables, common arguments and JSON output through :mod:`sparse.bench.harness`.
"""
from __future__ import annotations

import argparse
import importlib

BENCHES: dict[str, str] = {
    "masks": "sparse.bench.masks",
    "optimizer": "sparse.bench.optimizer",
    "blocksparse": "sparse.bench.blocksparse",
    "blocksparse-gpu": "sparse.bench.blocksparse_gpu",
    "convert": "sparse.bench.convert",
    "convert-minilm": "sparse.bench.convert_minilm",
    "accuracy": "sparse.bench.accuracy",
    "train": "sparse.bench.train",
    "sparse24": "sparse.bench.sparse24",
    "dropout": "sparse.bench.dropout",
}


class _Listing(argparse.HelpFormatter):
    """One line per benchmark in ``sparse bench --help``.

    argparse sizes the name column without the extra indent of sub-command names, so a long NAME
    (``blocksparse-gpu``) would push its description onto a line of its own.
    """

    def _format_action(self, action):
        self._action_max_length = max(self._action_max_length, max(map(len, BENCHES)) + 4)
        return super()._format_action(action)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = _Listing
    sub = parser.add_subparsers(dest="bench", metavar="NAME",
                                title="benchmarks (sparse bench NAME --help for the options of one)")
    sub.required = True
    for name, module_name in BENCHES.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=module.DESCRIPTION, description=module.__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)


def run(args) -> int:  # replaced by the chosen benchmark's run via set_defaults
    raise AssertionError("unreachable")
