"""Mask-method benchmark: time, kept magnitude relative to exact, and % complete tiles.

Weights: random Gaussian of a given shape, and/or the real pretrained MiniLM-L6 encoder Linear
weights (all 36 of them, solved one after another and summed). The networkx reference is timed on
a sample of tiles and extrapolated (a full 4096x4096 run takes ~10 minutes); the row says so.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass

import torch

from sparse.masks import transposable
from sparse.masks._batched import greedy as greedy_raw_tiles
from sparse.masks._checks import scores
from sparse.masks.tiles import from_tiles, to_tiles
from sparse.masks.validate import complete_tiles
from sparse.ops.dispatch import last_backend

log = logging.getLogger(__name__)

DEFAULT_METHODS = ("exact", "approx", "greedy", "greedy-raw", "flow")
FLOW_SAMPLE_TILES = 256


@dataclass
class Row:
    weights: str
    method: str
    backend: str
    seconds: float
    kept_vs_exact: float
    complete_tiles_pct: float
    note: str = ""


def parse_shape(text: str) -> tuple[int, int]:
    try:
        r, c = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"--shape: expected ROWSxCOLS like 4096x4096, got {text!r}") from None
    if r <= 0 or c <= 0:
        raise ValueError(f"--shape: expected positive sizes, got {text!r}")
    return r, c


def parse_pattern(text: str) -> tuple[int, int]:
    try:
        n, m = (int(v) for v in text.split(":"))
    except ValueError:
        raise ValueError(f"--pattern: expected N:M like 4:8, got {text!r}") from None
    return n, m


def minilm_weights() -> list[tuple[str, torch.Tensor]]:
    """The real MiniLM-L6 encoder Linear weights ``[out, in]`` (fp32), by name."""
    import os

    from safetensors.torch import load_file

    from sparse.data import minilm_path

    state = load_file(os.path.join(minilm_path(), "model.safetensors"))
    return [(k, v.float()) for k, v in state.items() if v.dim() == 2 and ".encoder." in f".{k}" and "weight" in k]


def _raw_greedy(w: torch.Tensor, n: int, m: int) -> torch.Tensor:
    return from_tiles(greedy_raw_tiles(to_tiles(scores(w), m), n), w.shape, m)


def _flow_sampled(w: torch.Tensor, n: int, m: int, sample: int) -> tuple[float, torch.Tensor, int]:
    """Time networkx on the first ``sample`` tiles; returns (extrapolated seconds, tile masks, count)."""
    tiles = to_tiles(scores(w), m)
    k = min(sample, tiles.shape[0])
    start = time.perf_counter()
    out = transposable._flow.flow_tiles(tiles[:k], n, m)
    return (time.perf_counter() - start) * tiles.shape[0] / k, out, k


def bench_weights(label: str, mats: list[torch.Tensor], n: int, m: int, methods) -> list[Row]:
    exact_masks = [transposable.solve(w, n, m, "exact") for w in mats]
    exact_kept = sum(float((w.abs().double() * mk).sum()) for w, mk in zip(mats, exact_masks))
    rows = []
    for method in methods:
        note, backend = "", "torch"
        if method == "flow":
            secs, kept, ntiles, done = 0.0, 0.0, 0, 0
            ref_kept = 0.0
            for w, ex in zip(mats, exact_masks):
                s, out, k = _flow_sampled(w, n, m, FLOW_SAMPLE_TILES)
                secs += s
                t = to_tiles(w.abs().double(), m)[:k]
                kept += float((t * out).sum())
                ref_kept += float((t * to_tiles(ex, m)[:k]).sum())
                done += int(((out.sum(1) == n).all(1) & (out.sum(2) == n).all(1)).sum())
                ntiles += k
            rows.append(Row(label, "flow", "networkx", secs, kept / ref_kept, 100.0 * done / ntiles,
                            f"extrapolated from {FLOW_SAMPLE_TILES} tiles per matrix"))
            continue
        start = time.perf_counter()
        if method == "greedy-raw":
            masks = [_raw_greedy(w, n, m) for w in mats]
            note = "plain 2-approximation, no repair: incomplete tiles are invalid"
        else:
            masks = [transposable.solve(w, n, m, method) for w in mats]
            enum = transposable._enum.enumerable(n, m)
            op = {"exact": "transposable_enum" if enum else "transposable_exact",
                  "approx": "transposable_enum" if enum else "transposable_approx",
                  "greedy": "transposable_greedy"}.get(method)
            backend = (last_backend(op) or "torch") if op else "torch"
        secs = time.perf_counter() - start
        kept = sum(float((w.abs().double() * mk).sum()) for w, mk in zip(mats, masks))
        complete = torch.cat([complete_tiles(mk, n, m) for mk in masks])
        rows.append(Row(label, method, backend, secs, kept / exact_kept, 100.0 * float(complete.float().mean()), note))
    return rows


def add_arguments(parser):
    parser.add_argument("--shape", default="4096x4096", help="random weight shape ROWSxCOLS (default 4096x4096)")
    parser.add_argument("--pattern", default="4:8", help="N:M pattern (default 4:8)")
    parser.add_argument("--weights", default="random",
                        help="comma list of weight sources: random, minilm (default random)")
    parser.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                        help=f"comma list from {', '.join(DEFAULT_METHODS)}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--json", metavar="PATH", help="also write the rows as JSON")


def run(args) -> int:
    from sparse.masks._checks import check_nm

    n, m = check_nm(*parse_pattern(args.pattern))
    r, c = parse_shape(args.shape)
    methods = [x.strip() for x in args.methods.split(",") if x.strip()]
    for x in methods:
        if x not in DEFAULT_METHODS:
            raise ValueError(f"--methods: expected names from {', '.join(DEFAULT_METHODS)}, got {x!r}")
    sources = [x.strip() for x in args.weights.split(",") if x.strip()]
    for x in sources:
        if x not in ("random", "minilm"):
            raise ValueError(f"--weights: expected random and/or minilm, got {x!r}")
    if args.threads:
        torch.set_num_threads(args.threads)
    rows: list[Row] = []
    for src in sources:
        if src == "random":
            if r % m or c % m:
                raise ValueError(f"--shape: expected sides divisible by m={m}, got {r}x{c}")
            gen = torch.Generator().manual_seed(args.seed)
            mats, label = [torch.randn(r, c, generator=gen)], f"random {r}x{c}"
        else:
            named = [(k, w) for k, w in minilm_weights() if w.shape[0] % m == 0 and w.shape[1] % m == 0]
            mats, label = [w for _, w in named], f"minilm ({len(named)} matrices)"
        rows += bench_weights(label, mats, n, m, methods)
    _print_table(rows, n, m)
    if args.json:
        from sparse.io_utils import atomic_write_text

        atomic_write_text(args.json, json.dumps({"pattern": f"{n}:{m}", "transposable": True,
                                                 "torch_threads": torch.get_num_threads(),
                                                 "rows": [asdict(x) for x in rows]}, indent=2))
    return 0


def _print_table(rows: list[Row], n: int, m: int) -> None:
    print(f"transposable {n}:{m} masks")
    head = f"{'weights':<24} {'method':<11} {'backend':<9} {'time (s)':>10} {'kept/exact':>11} {'complete %':>11}  note"
    print(head)
    print("-" * len(head))
    for x in rows:
        print(f"{x.weights:<24} {x.method:<11} {x.backend:<9} {x.seconds:>10.3f} {x.kept_vs_exact:>11.5f} "
              f"{x.complete_tiles_pct:>11.2f}  {x.note}")
