"""Console script ``sparse`` (also ``python -m sparse``).

Each sub-command lives in its own module exposing ``add_arguments(parser)`` and ``run(args) -> int``.
The registry below is explicit: an unknown command is an argparse error, never a dynamic lookup.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "masks": ("sparse.cli.masks", "N:M / transposable mask tools (diversity)"),
    "finetune": ("sparse.cli.finetune", "fine-tune a model while pruning it with a recipe"),
    "convert": ("sparse.cli.convert", "convert an unstructured-sparse checkpoint to N:M"),
    "bench": ("sparse.cli.bench", "benchmarks: sparse bench NAME (sparse bench --help lists them)"),
    "inspect": ("sparse.cli.inspect", "report the sparsity pattern of a checkpoint"),
    "backends": ("sparse.cli.backends_cmd", "list compute backends and why they are (not) available"),
}


def add_registered(parser: argparse.ArgumentParser, dest: str, metavar: str,
                   registry: dict[str, tuple[str, str]]) -> None:
    """One sub-parser per registry entry; each module fills its parser and provides ``run``."""
    sub = parser.add_subparsers(dest=dest, metavar=metavar)
    sub.required = True
    for name, (module_name, help_text) in registry.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue  # not shipped in this build
        p = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sparse", description="Structured-sparsity training toolkit.")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    add_registered(parser, "command", "COMMAND", COMMANDS)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args._run(args) or 0)
    except (ValueError, FileNotFoundError, FileExistsError, PermissionError) as exc:
        # User errors get one clear line, not a traceback (-vv shows it).
        if args.verbose >= 2:
            raise
        print(f"sparse {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
