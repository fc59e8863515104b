"""``sparse masks``: mask tools (``bench``, ``diversity``)."""
from __future__ import annotations

import json


def add_arguments(parser):
    sub = parser.add_subparsers(dest="masks_command", metavar="ACTION")
    sub.required = True
    from sparse.bench import masks as bench_masks

    p = sub.add_parser("bench", help="time and quality of the transposable mask methods",
                       description=bench_masks.__doc__)
    bench_masks.add_arguments(p)
    p.set_defaults(_run=bench_masks.run)

    d = sub.add_parser("diversity", help="exact number of valid masks of one m x m tile")
    d.add_argument("pattern", help="N:M, e.g. 2:4")
    d.add_argument("--transposable", action="store_true")
    d.add_argument("--json", action="store_true", help="print JSON")
    d.set_defaults(_run=_diversity)


def _diversity(args) -> int:
    from sparse.bench.masks import parse_pattern
    from sparse.masks import mask_diversity

    n, m = parse_pattern(args.pattern)
    value = mask_diversity(n, m, transposable=args.transposable)
    if args.json:
        print(json.dumps({"pattern": f"{n}:{m}", "transposable": args.transposable, "diversity": str(value)}))
    else:
        print(value)
    return 0


def run(args) -> int:  # replaced by the action's run via set_defaults
    raise AssertionError("unreachable")
