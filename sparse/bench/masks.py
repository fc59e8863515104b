"""Mask-method benchmark: time, kept magnitude relative to exact, and % complete tiles.

Weights: random Gaussian of a given shape, and/or the real pretrained MiniLM-L6 encoder Linear
weights (all 36 of them, solved one after another and summed). Each method is timed once (the
networkx reference takes ~10 minutes on a full 4096x4096 matrix, so it is timed on a sample of tiles
and extrapolated; the row says so).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from sparse.bench import harness
from sparse.masks import transposable
from sparse.masks._batched import greedy as greedy_raw_tiles
from sparse.masks._checks import scores
from sparse.masks.tiles import from_tiles, to_tiles
from sparse.masks.validate import complete_tiles
from sparse.ops.dispatch import last_backend

DESCRIPTION = "transposable mask methods: time, kept magnitude, validity"
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
    with harness.stopwatch(w.device) as sw:
        out = transposable._flow.flow_tiles(tiles[:k], n, m)
    return sw.wall_ms / 1e3 * tiles.shape[0] / k, out, k


def bench_weights(label: str, mats: list[torch.Tensor], n: int, m: int, methods) -> list[Row]:
    device = mats[0].device
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
        with harness.stopwatch(device) as sw:
            if method == "greedy-raw":
                masks = [_raw_greedy(w, n, m) for w in mats]
            else:
                masks = [transposable.solve(w, n, m, method) for w in mats]
        if method == "greedy-raw":
            note = "plain 2-approximation, no repair: incomplete tiles are invalid"
        else:
            enum = transposable._enum.enumerable(n, m)
            op = {"exact": "transposable_enum" if enum else "transposable_exact",
                  "approx": "transposable_enum" if enum else "transposable_approx",
                  "greedy": "transposable_greedy"}.get(method)
            backend = (last_backend(op) or "torch") if op else "torch"
        kept = sum(float((w.abs().double() * mk).sum()) for w, mk in zip(mats, masks))
        complete = torch.cat([complete_tiles(mk, n, m) for mk in masks])
        rows.append(Row(label, method, backend, sw.wall_ms / 1e3, kept / exact_kept,
                        100.0 * float(complete.float().mean()), note))
    return rows


def add_arguments(parser):
    parser.add_argument("--shape", default="4096x4096", help="random weight shape ROWSxCOLS (default 4096x4096)")
    parser.add_argument("--pattern", default="4:8", help="N:M pattern, always solved transposable (default 4:8)")
    parser.add_argument("--weights", default="random",
                        help="comma list of weight sources: random, minilm (default random)")
    parser.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                        help=f"comma list from {', '.join(DEFAULT_METHODS)}")
    parser.add_argument("--seed", type=int, default=0)
    harness.add_common_arguments(parser, devices=("cpu", "cuda"))


def run(args) -> int:
    from sparse.pruning.patterns import parse_pattern

    device = harness.setup(args)
    pattern = parse_pattern(args.pattern, transposable=True, name="--pattern")
    n, m = pattern.n, pattern.m
    r, c = parse_shape(args.shape)
    methods = harness.csv_choices(args.methods, DEFAULT_METHODS, "--methods")
    sources = harness.csv_arg(args.weights, str, "--weights")
    for x in sources:
        if x not in ("random", "minilm"):
            raise ValueError(f"--weights: expected random and/or minilm, got {x!r}")
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
        rows += bench_weights(label, [w.to(device) for w in mats], n, m, methods)
    print(f"transposable {n}:{m} masks ({device.type})")
    print(harness.format_table([asdict(x) for x in rows], COLUMNS))
    if args.json:
        harness.write_json(args.json, {"pattern": f"{n}:{m}", "transposable": True, "device": device.type,
                                       "torch_threads": torch.get_num_threads(),
                                       "rows": [asdict(x) for x in rows]}, force=args.force)
    return 0


COLUMNS = (
    harness.Column("weights", "weights", align="<"),
    harness.Column("method", "method", align="<"),
    harness.Column("backend", "backend", align="<"),
    harness.Column("seconds", "time (s)", ".3f"),
    harness.Column("kept_vs_exact", "kept/exact", ".5f"),
    harness.Column("complete_tiles_pct", "complete %", ".2f"),
    harness.Column("note", "note", align="<"),
)
