"""``sparse masks``: mask tools (``diversity``; the mask-method benchmark is ``sparse bench masks``)."""
from __future__ import annotations

import json


def add_arguments(parser):
    sub = parser.add_subparsers(dest="masks_command", metavar="ACTION")
    sub.required = True
    d = sub.add_parser("diversity", help="exact number of valid masks of one m x m tile")
    d.add_argument("pattern", help="N:M, e.g. 2:4 (N:MT, e.g. 2:4T, for transposable)")
    d.add_argument("--transposable", action="store_true", help="count transposable masks (as a T suffix does)")
    d.add_argument("--json", action="store_true", help="print JSON")
    d.set_defaults(_run=_diversity)


def _diversity(args) -> int:
    from sparse.masks import mask_diversity
    from sparse.pruning.patterns import parse_pattern

    p = parse_pattern(args.pattern, transposable=args.transposable, name="pattern")
    value = mask_diversity(p.n, p.m, transposable=p.transposable)
    if args.json:
        print(json.dumps({"pattern": f"{p.n}:{p.m}", "transposable": p.transposable, "diversity": str(value)}))
    else:
        print(value)
    return 0


def run(args) -> int:  # replaced by the action's run via set_defaults
    raise AssertionError("unreachable")
