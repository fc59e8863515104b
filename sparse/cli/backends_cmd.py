"""``sparse backends``: which compute backends are usable here."""
from __future__ import annotations

import json


def add_arguments(parser):
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args) -> int:
    from sparse import backends

    infos = backends()
    if args.json:
        print(json.dumps({k: {"available": v.available, "reason": v.reason} for k, v in infos.items()}, indent=2))
    else:
        for info in infos.values():
            print(f"{info.name:<10} {'yes' if info.available else 'no ':<4} {info.reason}")
    return 0
