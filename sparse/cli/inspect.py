"""``sparse inspect CKPT``: per tensor shape, dtype, density and which N:M patterns it satisfies."""
from __future__ import annotations

import json

import torch

PATTERNS = ((1, 2), (2, 4), (4, 8))


def add_arguments(parser):
    parser.add_argument("ckpt", help="a .safetensors file, a sharded *.index.json, a .pt/.bin state dict or an "
                                     "HF model folder")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def at_most_nm(nonzero: torch.Tensor, n: int, m: int) -> bool:
    """Every aligned group of m along dim 1 has at most n non-zeros (a zero may stand for a kept weight)."""
    rows, cols = nonzero.shape
    if cols % m:
        return False
    return bool((nonzero.reshape(rows, cols // m, m).sum(-1) <= n).all())


def at_most_transposable(nonzero: torch.Tensor, n: int, m: int) -> bool:
    """Every aligned m x m tile has at most n non-zeros per row and per column."""
    rows, cols = nonzero.shape
    if rows % m or cols % m:
        return False
    t = nonzero.reshape(rows // m, m, cols // m, m)
    return bool((t.sum(3) <= n).all()) and bool((t.sum(1) <= n).all())


def describe(name: str, t: torch.Tensor) -> dict:
    """Facts about one tensor; ``nm`` lists patterns whose groups hold at most N non-zeros."""
    info = {"name": name, "shape": list(t.shape), "dtype": str(t.dtype).replace("torch.", ""), "numel": t.numel()}
    info["density"] = int(torch.count_nonzero(t)) / t.numel() if t.numel() else 0.0
    info["nm"], info["transposable"] = [], []
    if t.dim() >= 2 and t.is_floating_point() and t.numel():
        nz = t.reshape(t.shape[0], -1) != 0
        for n, m in PATTERNS:
            if at_most_nm(nz, n, m):
                info["nm"].append(f"{n}:{m}")
            if at_most_transposable(nz, n, m):
                info["transposable"].append(f"{n}:{m}")
    return info


def run(args) -> int:
    from ..convert import iter_tensors

    rows = [describe(name, t) for name, t in iter_tensors(args.ckpt)]
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    head = f"{'tensor':<56} {'shape':>14} {'dtype':>8} {'density':>8}  n:m         transposable"
    print(head)
    print("-" * len(head))
    for r in rows:
        shape = "x".join(str(s) for s in r["shape"])
        print(f"{r['name'][-56:]:<56} {shape:>14} {r['dtype']:>8} {r['density']:>8.4f}  "
              f"{','.join(r['nm']) or '-':<11} {','.join(r['transposable']) or '-'}")
    return 0
