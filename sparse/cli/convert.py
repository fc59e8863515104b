"""``sparse convert SRC DST``: convert an unstructured-sparse checkpoint to N:M (see sparse.convert).

Bad arguments exit 2 with one line naming the argument (raised as ``ValueError``/``FileNotFoundError``/
``FileExistsError`` and reported by :func:`sparse.cli.main`). SIGINT and SIGTERM stop the conversion
through the atomic writers' clean-up (no temporary left, DST untouched) and exit 130 / 143 with a
one-line message (:mod:`sparse.cli.signals`).
"""
from __future__ import annotations

import argparse
import json
import sys

from ..convert.adaprune import FITS, AdaPruneConfig
from ..convert.calibration import METHODS as CALIBRATION_METHODS, CalibrationConfig
from ..masks import METHODS
from .signals import exit_code, interrupts_as_exceptions, signal_name

CALIBRATION_DEFAULTS = {"num_texts": AdaPruneConfig.num_texts, "max_length": AdaPruneConfig.max_length,
                        "fit": AdaPruneConfig.fit}
# option -> argparse dest, for the options that only mean something with --calibrate
_CALIBRATION_OPTIONS = {"--calibration-file": "calibration_file",
                        "--calibration-samples/--calibration-texts": "calibration_texts",
                        "--seq-len/--max-length": "max_length", "--fit": "fit", "--add-pruned-mean": "add_pruned_mean",
                        "--damp": "damp", "--sequential/--no-sequential": "sequential", "--refit": "refit"}
_ADAPRUNE_ONLY = {"--fit": "fit", "--add-pruned-mean": "add_pruned_mean"}


def add_arguments(parser):
    parser.add_argument("src", help="a .safetensors file, a sharded *.index.json, a .pt/.pth/.bin state dict "
                                    "(loaded with weights_only=True) or an HF model folder")
    parser.add_argument("dst", help="output file (.safetensors / .pt / .bin) or, for sharded/HF input, a folder")
    parser.add_argument("--pattern", default="2:4", help="N:M pattern, or N:MT for transposable (default 2:4)")
    parser.add_argument("--transposable", action="store_true", help="transposable N:M (W and W^T both N:M)")
    parser.add_argument("--method", default=None,
                        help=f"transposable mask method: {', '.join(METHODS)} (default auto; transposable only)")
    parser.add_argument("--include", action="append", default=None, metavar="RE",
                        help="convert tensors whose name matches RE (repeatable; replaces the default selection "
                             "of Linear/conv weights minus embeddings, norms and heads)")
    parser.add_argument("--exclude", action="append", default=None, metavar="RE",
                        help="never convert tensors whose name matches RE (repeatable)")
    parser.add_argument("--calibrate", nargs="?", const="adaprune", default=None, metavar="METHOD",
                        help="calibrate on text with METHOD (HF folders only; put it after SRC DST): adaprune "
                             "(what a plain --calibrate means: magnitude mask, then each layer's output fitted to the "
                             "source layer's), sparsegpt (mask chosen in an optimal-brain-surgeon sweep that updates "
                             "the remaining weights) or wanda (mask by |W_ij|*||X_j||, no update)")
    parser.add_argument("--sequential", action=argparse.BooleanOptionalAction, default=None,
                        help="calibrate block by block, each block on the already-pruned earlier blocks' outputs "
                             "(default with --calibrate); --no-sequential: every layer on the source model's inputs")
    parser.add_argument("--calibration-file", default=None, metavar="TXT",
                        help="calibration texts, one per non-empty line (default: BBC News training texts)")
    # None: "not given", so that calibration options without --calibrate are refused, not ignored
    parser.add_argument("--calibration-samples", "--calibration-texts", dest="calibration_texts", type=int,
                        default=None, metavar="N",
                        help=f"number of calibration texts (default {CALIBRATION_DEFAULTS['num_texts']})")
    parser.add_argument("--seq-len", "--max-length", dest="max_length", type=int, default=None, metavar="T",
                        help=f"tokens per calibration text (default {CALIBRATION_DEFAULTS['max_length']})")
    parser.add_argument("--damp", type=float, default=None,
                        help="sparsegpt: damping of H as a fraction of its mean diagonal (default "
                             f"{CalibrationConfig.damp}); adaprune: the least-squares ridge "
                             f"(default {AdaPruneConfig.damp})")
    parser.add_argument("--refit", action="store_true",
                        help="sparsegpt, wanda: refit the kept weights and bias by least squares after the mask")
    parser.add_argument("--fit", default=None, help="adaprune: lstsq (default), lstsq-exact, adam or none")
    parser.add_argument("--add-pruned-mean", action="store_true",
                        help="add each group's pruned mean to its survivors before the fit")
    parser.add_argument("--report", default=None, metavar="JSON", help="write the report as JSON")
    parser.add_argument("--force", action="store_true", help="replace an existing DST / report")
    parser.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _calibration(args):
    """``(method, settings)`` or ``(None, None)``, with the CLI's own option names in messages."""
    if args.calibrate is None:
        for flag, dest in _CALIBRATION_OPTIONS.items():
            if getattr(args, dest) not in (None, False):
                raise ValueError(f"{flag}: only used with --calibrate")
        return None, None
    if args.calibrate not in CALIBRATION_METHODS:
        raise ValueError(f"--calibrate: expected one of {', '.join(CALIBRATION_METHODS)} (after SRC DST), "
                         f"got {args.calibrate!r}")
    num_texts = CALIBRATION_DEFAULTS["num_texts"] if args.calibration_texts is None else args.calibration_texts
    max_length = CALIBRATION_DEFAULTS["max_length"] if args.max_length is None else args.max_length
    for flag, value in (("--calibration-samples/--calibration-texts", num_texts),
                        ("--seq-len/--max-length", max_length)):
        if value < 1:
            raise ValueError(f"{flag}: expected an integer >= 1, got {value}")
    if args.damp is not None and not args.damp >= 0:
        raise ValueError(f"--damp: expected a number >= 0, got {args.damp}")
    if args.calibrate != "adaprune":
        for flag, dest in _ADAPRUNE_ONLY.items():
            if getattr(args, dest) not in (None, False):
                raise ValueError(f"{flag}: only used with --calibrate adaprune, got --calibrate {args.calibrate}")
        damp = CalibrationConfig.damp if args.damp is None else args.damp
        return args.calibrate, CalibrationConfig(num_texts=num_texts, max_length=max_length, damp=damp,
                                                 refit=args.refit)
    if args.refit:
        raise ValueError("--refit: only used with --calibrate sparsegpt or wanda (adaprune always fits)")
    fit = CALIBRATION_DEFAULTS["fit"] if args.fit is None else args.fit
    if fit not in FITS:
        raise ValueError(f"--fit: expected one of {', '.join(FITS)}, got {fit!r}")
    if args.damp is not None and not args.damp > 0:
        raise ValueError(f"--damp: expected a number > 0 with --calibrate adaprune, got {args.damp}")
    damp = AdaPruneConfig.damp if args.damp is None else args.damp
    return "adaprune", AdaPruneConfig(fit=fit, add_pruned_mean=args.add_pruned_mean, num_texts=num_texts,
                                      max_length=max_length, damp=damp)


def _pattern(args):
    """The pattern object, with the CLI's option names in messages."""
    from ..pruning.patterns import parse_pattern

    method = "auto" if args.method is None else args.method
    if method not in METHODS:
        raise ValueError(f"--method: expected one of {', '.join(METHODS)}, got {method!r}")
    pattern = parse_pattern(args.pattern, transposable=args.transposable, method=method, name="--pattern")
    if args.method is not None and not pattern.transposable:
        raise ValueError(f"--method: only used with transposable patterns (--transposable or N:MT), "
                         f"got --pattern {args.pattern}")
    return pattern


def run(args) -> int:
    from ..convert import convert_checkpoint

    pattern = _pattern(args)
    method, calibration = _calibration(args)
    try:
        with interrupts_as_exceptions():
            report = convert_checkpoint(args.src, args.dst, pattern=pattern, include=args.include, exclude=args.exclude,
                                        calibrate=method or False, calibration=calibration,
                                        sequential=args.sequential,
                                        calibration_file=args.calibration_file, force=args.force,
                                        report_path=args.report, progress=not args.no_progress)
    except KeyboardInterrupt as exc:  # SIGINT, or SIGTERM as Terminated
        # The writers removed their temporaries on the way out; a traceback would only hide that.
        print(f"sparse convert: interrupted ({signal_name(exc)}); no partial output left behind", file=sys.stderr)
        return exit_code(exc)
    print(json.dumps(report.to_dict(), indent=1) if args.json else report.table())
    return 0
