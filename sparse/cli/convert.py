"""``sparse convert SRC DST``: convert an unstructured-sparse checkpoint to N:M (see sparse.convert).

Bad arguments exit 2 with one line naming the argument (raised as ``ValueError``/``FileNotFoundError``/
``FileExistsError`` and reported by :func:`sparse.cli.main`). SIGINT and SIGTERM stop the conversion
through the atomic writers' clean-up (no temporary left, DST untouched) and exit 130 / 143 with a
one-line message (:mod:`sparse.cli.signals`).
"""
from __future__ import annotations

import json
import sys

from ..masks import METHODS
from .signals import exit_code, interrupts_as_exceptions, signal_name

CALIBRATION_METHODS = ("adaprune",)


def add_arguments(parser):
    parser.add_argument("src", help="a .safetensors file, a sharded *.index.json, a .pt/.pth/.bin state dict "
                                    "(loaded with weights_only=True) or an HF model folder")
    parser.add_argument("dst", help="output file (.safetensors / .pt / .bin) or, for sharded/HF input, a folder")
    parser.add_argument("--pattern", default="2:4", help="N:M pattern, or N:MT for transposable (default 2:4)")
    parser.add_argument("--transposable", action="store_true", help="transposable N:M (W and W^T both N:M)")
    parser.add_argument("--method", default="auto", help=f"transposable mask method: {', '.join(METHODS)}")
    parser.add_argument("--include", action="append", default=None, metavar="RE",
                        help="convert tensors whose name matches RE (repeatable; replaces the default selection "
                             "of Linear/conv weights minus embeddings, norms and heads)")
    parser.add_argument("--exclude", action="append", default=None, metavar="RE",
                        help="never convert tensors whose name matches RE (repeatable)")
    parser.add_argument("--calibrate", nargs="?", const="adaprune", default=None, metavar="METHOD",
                        help="calibrate with METHOD (adaprune, the default: fit each pruned layer to the dense "
                             "layer's output; HF folders only); put it after SRC DST")
    parser.add_argument("--calibration-file", default=None, metavar="TXT",
                        help="calibration texts, one per non-empty line (default: BBC News training texts)")
    parser.add_argument("--calibration-texts", type=int, default=64, metavar="N", help="number of texts (default 64)")
    parser.add_argument("--max-length", type=int, default=128, help="tokens per calibration text (default 128)")
    parser.add_argument("--fit", default="lstsq", help="lstsq (default), lstsq-exact, adam or none")
    parser.add_argument("--add-pruned-mean", action="store_true",
                        help="add each group's pruned mean to its survivors before the fit")
    parser.add_argument("--report", default=None, metavar="JSON", help="write the report as JSON")
    parser.add_argument("--force", action="store_true", help="replace an existing DST / report")
    parser.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _calibration(args):
    """The AdaPrune settings, with the CLI's own option names in messages."""
    if args.calibrate is None:
        if args.calibration_file is not None:
            raise ValueError("--calibration-file: only used with --calibrate")
        return None
    if args.calibrate not in CALIBRATION_METHODS:
        raise ValueError(f"--calibrate: expected one of {', '.join(CALIBRATION_METHODS)}, got {args.calibrate!r}")
    for flag, value in (("--calibration-texts", args.calibration_texts), ("--max-length", args.max_length)):
        if value < 1:
            raise ValueError(f"{flag}: expected an integer >= 1, got {value}")
    from ..convert.adaprune import FITS, AdaPruneConfig

    if args.fit not in FITS:
        raise ValueError(f"--fit: expected one of {', '.join(FITS)}, got {args.fit!r}")
    return AdaPruneConfig(fit=args.fit, add_pruned_mean=args.add_pruned_mean, num_texts=args.calibration_texts,
                          max_length=args.max_length)


def run(args) -> int:
    from ..convert import convert_checkpoint

    calibration = _calibration(args)
    try:
        with interrupts_as_exceptions():
            report = convert_checkpoint(args.src, args.dst, pattern=args.pattern, transposable=args.transposable,
                                        method=args.method, include=args.include, exclude=args.exclude,
                                        calibrate=calibration is not None, calibration=calibration,
                                        calibration_file=args.calibration_file, force=args.force,
                                        report_path=args.report, progress=not args.no_progress)
    except KeyboardInterrupt as exc:  # SIGINT, or SIGTERM as Terminated
        # The writers removed their temporaries on the way out; a traceback would only hide that.
        print(f"sparse convert: interrupted ({signal_name(exc)}); no partial output left behind", file=sys.stderr)
        return exit_code(exc)
    print(json.dumps(report.to_dict(), indent=1) if args.json else report.table())
    return 0
