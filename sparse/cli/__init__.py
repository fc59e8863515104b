"""Console script ``sparse`` (also ``python -m sparse``).

Each sub-command lives in its own module exposing ``add_arguments(parser)`` and ``run(args) -> int``.
The registry below is explicit: an unknown command is an argparse error, never a dynamic lookup.
Errors a user can fix (bad arguments or files, a full or read-only disk, a missing backend) end the
command with one line on stderr and exit status 2; ``-vv`` or ``SPARSE_DEBUG=1`` shows the traceback.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
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


def _debug(args) -> bool:
    """Tracebacks instead of one-line errors: ``-vv`` or ``SPARSE_DEBUG=1``."""
    return args.verbose >= 2 or os.environ.get("SPARSE_DEBUG", "") not in ("", "0")


def error_line(exc: BaseException) -> str:
    """One line for a handled error. An OSError shows its reason and file (``No space left on device:
    'run/model.safetensors'``), not ``[Errno 28]``; any message is folded onto one line."""
    if isinstance(exc, OSError) and exc.strerror:
        text = exc.strerror
        if exc.filename is not None:
            text += f": {exc.filename!r}"
        if exc.filename2 is not None:
            text += f" -> {exc.filename2!r}"
    else:
        text = str(exc) or type(exc).__name__
    text = " ".join(text.split())
    return text if len(text) <= 2000 else text[:1997] + "..."


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    from ..ops.dispatch import BackendUnavailable
    from .signals import exit_code, interrupts_as_exceptions, signal_name

    try:
        # SIGTERM unwinds like Ctrl-C in every command, so the atomic writers remove their temporaries
        with interrupts_as_exceptions():
            return int(args._run(args) or 0)
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM where a command turns it into Terminated
        if _debug(args):
            raise
        name = signal_name(exc)
        print(f"sparse {args.command}: " + ("interrupted" if name == "SIGINT" else f"terminated ({name})"),
              file=sys.stderr)
        return exit_code(exc)
    except (ValueError, OSError, BackendUnavailable) as exc:
        # Bad input (ValueError, RecipeError), the disk or file system (OSError: missing, read-only,
        # full, permission denied) and a backend that cannot run here are the user's to fix: one
        # line naming the argument or path. Anything else is a bug and keeps its traceback.
        if _debug(args):
            raise
        print(f"sparse {args.command}: error: {error_line(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
