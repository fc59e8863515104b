"""Dropout: :func:`sparse.ops.dropout` (the Philox kernel of ``csrc``) vs :func:`torch.nn.functional.dropout`.

    sparse bench dropout --shapes minilm-hidden,minilm-attn,bert-hidden --dtypes bf16,fp32 --threads 1

For every shape and dtype: first a check of the fast kernel (kept fraction within 6 sigma of ``1 - p``, kept
values ``x / (1 - p)`` within the dtype's rounding, the backward equal to ``grad * keep / (1 - p)``, two calls
drawing different masks); a failed check stops the run (exit 1) before anything is timed. Then forward and
forward+backward, each op timed in alternating rounds (same round, same inputs, so machine noise hits both),
median, min and max of ``--repeats`` rounds, and the ratios ``torch / fast``. Without the extension's kernel
the fast path is torch itself: the table says which backend ran (``sparse.ops.last_backend("dropout")``).
"""
from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F

from . import harness

log = logging.getLogger(__name__)

DESCRIPTION = "dropout: sparse.ops.dropout (Philox, fused scaling) vs torch.nn.functional.dropout, fwd and fwd+bwd"
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}
# activation shapes of a batch of 16 x 128 tokens: hidden states and attention probabilities
SHAPES = {"minilm-hidden": (16, 128, 384), "minilm-attn": (16, 12, 128, 128), "minilm-ffn": (16, 128, 1536),
          "bert-hidden": (16, 128, 768), "bert-ffn": (16, 128, 3072)}


def add_arguments(parser) -> None:
    parser.add_argument("--shapes", default="minilm-hidden,minilm-attn,bert-hidden",
                        help=f"comma-separated, from {', '.join(SHAPES)} (default: %(default)s)")
    parser.add_argument("--dtypes", default="bf16,fp32", help=f"comma-separated, from {', '.join(DTYPES)}")
    parser.add_argument("--p", type=float, default=0.1, help="drop probability (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=15, help="timed rounds per op (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds first (default: %(default)s)")
    harness.add_common_arguments(parser, threads=1)


def check(x: torch.Tensor, p: float) -> str | None:
    """None if :func:`sparse.ops.dropout` behaves as dropout on ``x`` (any float tensor; module docstring), else what
    failed."""
    from ..ops import dropout

    # the kept set is read off the output, so exact zeros (randn in bf16 has a few) are made non-zero first
    x = torch.where(x == 0, torch.ones_like(x), x.detach())
    xs = x.clone().requires_grad_(True)
    y = dropout(xs, p)
    keep = y != 0
    n = x.numel()
    kept = int(keep.sum())
    sigma = math.sqrt(n * p * (1 - p))
    if abs(kept - n * (1 - p)) > 6 * sigma + 1:
        return f"kept {kept} of {n} elements, expected about {n * (1 - p):.0f} (6 sigma {6 * sigma:.0f})"
    ref = (x.float() / (1 - p))[keep]
    tol = {torch.float32: 1e-6, torch.float64: 1e-12}.get(x.dtype, 1e-2)
    if not torch.allclose(y.float()[keep], ref, rtol=tol, atol=0):
        return "kept values differ from x / (1 - p)"
    g = torch.randn_like(x)
    y.backward(g)
    want = torch.where(keep, g.float() / (1 - p), 0.0)
    if not torch.allclose(xs.grad.float(), want, rtol=tol, atol=1e-30):
        return "gradient differs from grad * keep / (1 - p)"
    if torch.equal(dropout(x, p) != 0, keep):
        return "two calls drew the same mask"
    return None


def _forward(fn, x, p):
    return lambda: fn(x, p)


def _fwd_bwd(fn, x, p, g):
    def step():
        x.grad = None
        fn(x, p).backward(g)
    return step


def run(args) -> int:
    from ..ops import dropout, last_backend
    from ..ops.dropout import native_isa

    harness.setup(args)  # bad input raises ValueError/OSError: the CLI prints one line naming the argument
    shapes = harness.csv_choices(args.shapes, SHAPES, "--shapes")
    dtypes = harness.csv_choices(args.dtypes, DTYPES, "--dtypes")
    if not 0.0 < args.p < 1.0:
        raise ValueError(f"--p: expected a probability in (0, 1), got {args.p}")
    if args.repeats < 1 or args.warmup < 0:
        raise ValueError(f"--repeats, --warmup: expected >= 1 and >= 0, got {args.repeats}, {args.warmup}")

    torch.manual_seed(0)
    records = []
    for s in shapes:
        for d in dtypes:
            x = torch.randn(SHAPES[s], dtype=DTYPES[d], device=args.device)
            why = check(x, args.p)
            backend = last_backend("dropout")
            if why is not None:
                print(f"sparse bench dropout: {s} {d}: check failed: {why}; nothing timed")
                return 1
            xg = x.clone().requires_grad_(True)
            g = torch.randn_like(x)
            fwd = harness.time_interleaved({"torch": _forward(F.dropout, x, args.p), "fast": _forward(dropout, x, args.p)},
                               args.repeats, args.warmup)
            both = harness.time_interleaved({"torch": _fwd_bwd(F.dropout, xg, args.p, g),
                                 "fast": _fwd_bwd(dropout, xg, args.p, g)}, args.repeats, args.warmup)
            rec = {"shape": s, "dims": list(SHAPES[s]), "dtype": d, "p": args.p, "backend": backend,
                   "correct": True,
                   "torch_fwd_ms": fwd["torch"].median_ms, "fast_fwd_ms": fwd["fast"].median_ms,
                   "torch_fwd_bwd_ms": both["torch"].median_ms, "fast_fwd_bwd_ms": both["fast"].median_ms,
                   "timings": {k: {"fwd": vars_of(fwd[k]), "fwd_bwd": vars_of(both[k])} for k in fwd}}
            rec["fwd_speedup"] = rec["torch_fwd_ms"] / rec["fast_fwd_ms"]
            rec["fwd_bwd_speedup"] = rec["torch_fwd_bwd_ms"] / rec["fast_fwd_bwd_ms"]
            records.append(rec)
            log.info("dropout %s %s: %.2fx fwd, %.2fx fwd+bwd", s, d, rec["fwd_speedup"], rec["fwd_bwd_speedup"])

    C = harness.Column
    x_fmt = lambda v: f"{v:.2f}x"  # noqa: E731
    print(f"sparse bench dropout: p={args.p}, {args.device}, {torch.get_num_threads()} threads; "
          f"{harness.cpu_model()}; native kernel: {native_isa() or 'none'}")
    print(harness.format_table(records, [
        C("shape", "shape", align="<"), C("dtype", "dtype", align="<"),
        C("torch_fwd_ms", "torch fwd ms", ".3f"), C("fast_fwd_ms", "fast fwd ms", ".3f"), C("fwd_speedup", "fwd", x_fmt),
        C("torch_fwd_bwd_ms", "torch f+b ms", ".3f"), C("fast_fwd_bwd_ms", "fast f+b ms", ".3f"),
        C("fwd_bwd_speedup", "f+b", x_fmt), C("backend", "backend", align="<")]))
    if args.json:
        harness.write_json(args.json, {"benchmark": "dropout", "config": harness.config(args),
                                       "machine": machine(), "records": records}, force=args.force)
    return 0


def vars_of(t: harness.Timing) -> dict:
    return {"median_ms": t.median_ms, "min_ms": t.min_ms, "max_ms": t.max_ms, "times_ms": list(t.times_ms)}


def machine() -> dict:
    from ..ops.dropout import native_isa

    return {"cpu_model": harness.cpu_model(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "dropout_isa": native_isa(), "threads": torch.get_num_threads(), "torch": torch.__version__}
