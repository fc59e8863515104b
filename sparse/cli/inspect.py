"""``sparse inspect CKPT``: per tensor shape, dtype, density and which N:M patterns it satisfies; for a packed
MLPruning folder also its per-layer heads, widths and block-sparse matrices."""
from __future__ import annotations

import json

import torch

from ..convert.reader import nonzero_mask
from ..pruning.patterns import NMPattern, TransposableNMPattern

# the N:M patterns every tensor is checked against
PATTERNS: tuple[NMPattern, ...] = (NMPattern(1, 2), NMPattern(2, 4), NMPattern(4, 8))


def add_arguments(parser):
    parser.add_argument("ckpt", help="a .safetensors file, a sharded *.index.json, a .pt/.bin state dict or an "
                                     "HF model folder")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def describe(name: str, t: torch.Tensor) -> dict:
    """Facts about one tensor; ``nm`` / ``transposable`` list the patterns the tensor already has
    (at most N non-zeros per group / per tile row and column: a zero may stand for a kept weight)."""
    info = {"name": name, "shape": list(t.shape), "dtype": str(t.dtype).replace("torch.", ""), "numel": t.numel()}
    # nonzero_mask: torch has no count_nonzero for float8/uint16-64 and nothing at all for float4
    nonzero = nonzero_mask(t)
    info["density"] = int(torch.count_nonzero(nonzero)) / nonzero.numel() if nonzero.numel() else 0.0
    info["nm"], info["transposable"] = [], []
    if t.dim() >= 2 and t.numel() and not t.is_floating_point():
        info["note"] = f"N:M analysis skipped: {info['dtype']} is not a floating-point weight"
    elif t.dim() >= 2 and t.numel():
        for p in PATTERNS:
            if p.conforms(nonzero):
                info["nm"].append(p.describe())
            if TransposableNMPattern(p.n, p.m).conforms(nonzero):
                info["transposable"].append(p.describe())
    return info


def run(args) -> int:
    from ..convert import iter_tensors

    rows = [describe(name, t) for name, t in iter_tensors(args.ckpt)]
    packed = _packed_summary(args.ckpt)
    if args.json:
        print(json.dumps(rows if packed is None else {"mlpruning": packed, "tensors": rows}, indent=1))
        return 0
    if packed is not None:
        _print_packed(packed)
    head = f"{'tensor':<56} {'shape':>14} {'dtype':>8} {'density':>8}  n:m         transposable"
    print(head)
    print("-" * len(head))
    for r in rows:
        shape = "x".join(str(s) for s in r["shape"])
        print(f"{r['name'][-56:]:<56} {shape:>14} {r['dtype']:>8} {r['density']:>8.4f}  "
              f"{','.join(r['nm']) or '-':<11} {','.join(r['transposable']) or '-'}")
    return 0


def _packed_summary(path) -> dict | None:
    """The MLPruning record of a packed model folder (heads, widths, block-sparse matrices), else None."""
    import os

    if not os.path.isdir(path):
        return None
    from ..mlpruning.io import describe_packed

    return describe_packed(path)


def _print_packed(s: dict) -> None:
    print(f"MLPruning packed {s['family']} model: {s['encoder_weights']:,} of {s['dense_encoder_weights']:,} encoder "
          f"Linear weights remain ({100 * s['remaining_fraction']:.1f}%)")
    head = f"{'layer':>5} {'heads':>7} {'ffn':>11} {'attn_out rows':>13} {'ffn_out rows':>12}  block-sparse"
    print(head)
    for lr in s["layers"]:
        print(f"{lr['layer']:>5} {lr['heads']:>3}/{lr['of_heads']:<3} "
              f"{lr['intermediate_size']:>5}/{lr['of_intermediate']:<5} "
              f"{lr['attn_out_rows']:>6}/{lr['hidden']:<6} {lr['ffn_out_rows']:>5}/{lr['hidden']:<6}  "
              f"{','.join(lr['block_sparse']) or '-'}")
    for note in s["notes"]:
        print(f"note: {note}")
    print()
