"""``sparse convert SRC DST``: convert an unstructured-sparse checkpoint to N:M (see sparse.convert)."""
from __future__ import annotations

import json

from ..masks import METHODS


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
    parser.add_argument("--calibrate", action="store_true",
                        help="AdaPrune: fit each pruned layer to the dense layer's output (HF folders only)")
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


def _read_texts(path: str) -> list[str]:
    with open(path, encoding="utf-8") as f:
        texts = [line.strip() for line in f if line.strip()]
    if not texts:
        raise ValueError(f"--calibration-file: expected at least one non-empty line, got none in {path!r}")
    return texts


def run(args) -> int:
    from ..convert import convert_checkpoint

    calibration = texts = None
    if args.calibrate:
        from ..convert.adaprune import AdaPruneConfig

        calibration = AdaPruneConfig(fit=args.fit, add_pruned_mean=args.add_pruned_mean,
                                     num_texts=args.calibration_texts, max_length=args.max_length)
        if args.calibration_file is not None:
            texts = _read_texts(args.calibration_file)
    elif args.calibration_file is not None:
        raise ValueError("--calibration-file: only used with --calibrate")
    report = convert_checkpoint(args.src, args.dst, pattern=args.pattern, transposable=args.transposable,
                                method=args.method, include=args.include, exclude=args.exclude,
                                calibrate=args.calibrate, calibration=calibration, calibration_texts=texts,
                                force=args.force, report_path=args.report, progress=not args.no_progress)
    print(json.dumps(report.to_dict(), indent=1) if args.json else report.table())
    return 0
