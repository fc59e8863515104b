"""``sparse bench blocksparse``: BlockSparseLinear fwd+bwd vs dense ``nn.Linear`` on the CPU.

Default: BERT-base FFN shapes (768->3072 and 3072->768, each Linear on its own), 4096 tokens, bf16, blocks
32 and 64, sparsity 50-95 %, random block masks, both CPU backends (``csrc-cpu``: the C++ kernels, ``torch``: the
pure-torch gather path). Dense and every backend's runs alternate in one process (round-robin, so
machine noise hits all sides alike) and the table reports medians and their ratio (speedup > 1:
block-sparse is faster), plus the break-even sparsity (the lowest measured sparsity from which on
block-sparse is at least as fast) per shape, block and backend.

Shapes: ``up`` / ``down`` / ``IN:OUT`` time one Linear; ``minilm-ffn`` (384 <-> 1536, 2048 tokens = batch 16
x 128), ``bert-ffn`` (768 <-> 3072, 4096 tokens) and ``ffn:H:F`` time a Transformer FFN's two Linears
(``H -> F`` then ``F -> H``, each with its own random mask, no activation between them: it would cost both
sides the same) as one fwd+bwd. ``--tokens`` overrides each shape's own token count. ``--isa`` runs the
native bf16 kernels of one family (``SPARSE_BSR_ISA``): ``amx``, ``avx512bf16`` or ``brgemm``.
"""
from __future__ import annotations

import contextlib
import logging
import os

import torch
import torch.nn as nn

from sparse.bench import harness

DESCRIPTION = "BlockSparseLinear fwd+bwd vs dense nn.Linear (CPU)"

log = logging.getLogger(__name__)

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}
# name -> (kind, in or hidden, out or ffn, tokens): "linear" times one Linear IN -> OUT, "ffn" the pair
# H -> F -> H of a Transformer FFN.
SHAPES = {"up": ("linear", 768, 3072, 4096), "down": ("linear", 3072, 768, 4096),
          "minilm-ffn": ("ffn", 384, 1536, 2048), "bert-ffn": ("ffn", 768, 3072, 4096)}
DEFAULT_TOKENS = 4096
ISAS = ("amx", "avx512bf16", "brgemm")
BACKENDS = ("csrc-cpu", "torch")  # the CPU block-sparse backends of sparse.ops


def add_arguments(parser) -> None:
    parser.add_argument("--tokens", type=int, default=None,
                        help="rows of x (batch*sequence); default: each shape's own (minilm-ffn 2048, else 4096)")
    parser.add_argument("--shapes", default="up,down",
                        help="comma list of up (768->3072), down (3072->768), IN:OUT (one Linear), minilm-ffn "
                             "(384<->1536, 2048 tokens), bert-ffn (768<->3072, 4096 tokens), ffn:H:F (an FFN's "
                             "two Linears); default up,down")
    parser.add_argument("--blocks", default="32,64", help="comma list of block sizes, default 32,64")
    parser.add_argument("--sparsities", "--sparsity", default="0.5,0.6,0.7,0.8,0.9,0.95",
                        help="comma list of block sparsities in [0, 1), default 0.5..0.95")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    parser.add_argument("--repeats", type=int, default=5, help="timed fwd+bwd runs of each side, default 5")
    parser.add_argument("--backends", default=",".join(BACKENDS),
                        help="comma list of block-sparse backends to force, side by side: csrc-cpu (C++ kernels), "
                             "torch (gather path); default csrc-cpu,torch")
    parser.add_argument("--isa", choices=ISAS, default=None,
                        help="native bf16 kernel family to run (sets SPARSE_BSR_ISA; default: the best this CPU has)")
    parser.add_argument("--seed", type=int, default=0)
    harness.add_common_arguments(parser, threads=2)


def _shapes(text: str) -> list[tuple[str, str, int, int, int]]:
    """``[(name, kind, in, out, default tokens)]`` from the ``--shapes`` list."""
    out = []
    for item in harness.csv_arg(text, str, "--shapes"):
        item = item.strip()
        if item in SHAPES:
            out.append((item, *SHAPES[item]))
            continue
        parts = item.split(":")
        kind = "ffn" if parts[0] == "ffn" else "linear"
        try:
            i, o = (int(v) for v in (parts[1:] if kind == "ffn" else parts))
        except ValueError:
            raise ValueError(f"--shapes: expected up, down, minilm-ffn, bert-ffn, IN:OUT or ffn:H:F, "
                             f"got {item!r}") from None
        if i < 1 or o < 1:
            raise ValueError(f"--shapes: expected positive sizes, got {item!r}")
        out.append((item, kind, i, o, DEFAULT_TOKENS))
    return out


def _layers(kind: str, in_f: int, out_f: int, block: int, sparsity: float, dtype, gen):
    """(dense module, block-sparse module, mask density): one Linear, or an FFN's two (H -> F -> H)."""
    from sparse.nn import BlockSparseLinear

    dims = [(in_f, out_f)] if kind == "linear" else [(in_f, out_f), (out_f, in_f)]
    dense, sparse, kept, total = [], [], 0, 0
    for i, o in dims:
        lin = nn.Linear(i, o).to(dtype)
        mask = torch.rand(o // block, i // block, generator=gen) >= sparsity
        dense.append(lin)
        sparse.append(BlockSparseLinear.from_dense(lin, mask))
        kept, total = kept + int(mask.sum()), total + mask.numel()
    if kind == "linear":
        return dense[0], sparse[0], kept / total
    return nn.Sequential(*dense), nn.Sequential(*sparse), kept / total


def _fwd_bwd(layer: nn.Module, x: torch.Tensor, g: torch.Tensor) -> float:
    """Milliseconds of one forward + backward (gradients cleared first, outside the timed span)."""
    x.grad = None
    for p in layer.parameters():
        p.grad = None
    return harness.time_once(lambda: layer(x).backward(g)).wall_ms


def measure(in_f: int, out_f: int, block: int, sparsity: float, tokens: int, dtype, repeats: int,
            backends: list[str], seed: int, kind: str = "linear") -> list[dict]:
    """Median fwd+bwd milliseconds of a dense layer and the block-sparse one on each backend, round-robin.

    Returns one row per backend; each carries the dense median of the same run. A backend that cannot
    run this case here (e.g. bf16 on a CPU with neither AMX nor AVX512-BF16) gets ``sparse_ms`` and
    ``speedup`` None and the reason in ``unavailable``. ``kind="ffn"``: an FFN's two Linears
    ``in_f -> out_f -> in_f`` timed as one.
    """
    from sparse.ops import BackendUnavailable, last_backend, use_backend

    gen = torch.Generator().manual_seed(seed)
    dense, sparse_layer, density = _layers(kind, in_f, out_f, block, sparsity, dtype, gen)
    x = torch.randn(tokens, in_f, generator=gen).to(dtype).requires_grad_()
    g = torch.randn(tokens, out_f if kind == "linear" else in_f, generator=gen).to(dtype)
    t_dense, t_sparse, ran, unavailable = [], {b: [] for b in backends}, {}, {}
    _fwd_bwd(dense, x, g)
    for b in backends:  # warm-up (oneDNN primitives, page faults of fresh buffers)
        with use_backend(b):
            try:
                _fwd_bwd(sparse_layer, x, g)
            except BackendUnavailable as exc:
                unavailable[b] = str(exc)
                log.warning("backend %s skipped: %s", b, exc)
                continue
            ran[b] = last_backend("block_sparse.dds")
    live = [b for b in backends if b not in unavailable]
    for _ in range(repeats):
        t_dense.append(_fwd_bwd(dense, x, g))
        for b in live:
            with use_backend(b):
                t_sparse[b].append(_fwd_bwd(sparse_layer, x, g))
    d = harness.summarize(t_dense).median_ms
    rows = []
    for b in backends:
        row = {"kind": kind, "in": in_f, "out": out_f, "block": block, "sparsity": sparsity,
               "actual_sparsity": 1.0 - density, "tokens": tokens, "dtype": str(dtype),
               "backend": ran.get(b, b), "dense_ms": d, "sparse_ms": None, "speedup": None}
        if b in unavailable:
            row["unavailable"] = unavailable[b]
        else:
            s = harness.summarize(t_sparse[b]).median_ms
            row.update(sparse_ms=s, speedup=d / s)
        rows.append(row)
    return rows


def break_even(rows: list[dict]) -> float | None:
    """Lowest measured sparsity from which on every larger one is at least as fast as dense."""
    best = None
    for r in sorted(rows, key=lambda r: -r["sparsity"]):
        if r["speedup"] is None or r["speedup"] < 1.0:
            break
        best = r["sparsity"]
    return best


def _native_kernels() -> list[str]:
    from sparse.ops._bsr_cpu import native_kernels

    return native_kernels() or ["none (sparse._C not built)"]


def run(args) -> int:
    shapes = _shapes(args.shapes)
    blocks = harness.csv_arg(args.blocks, int, "--blocks")
    sparsities = harness.csv_arg(args.sparsities, float, "--sparsities")
    for s in sparsities:
        if not 0.0 <= s < 1.0:
            raise ValueError(f"--sparsities: expected values in [0, 1), got {s}")
    for b in blocks:
        if b not in (16, 32, 64, 128):
            raise ValueError(f"--blocks: expected block sizes among 16, 32, 64, 128, got {b}")
    for name, _, i, o, _ in shapes:
        for b in blocks:
            if i % b or o % b:
                raise ValueError(f"--shapes: {name} ({i}x{o}) is not a multiple of block {b}")
    if (args.tokens is not None and args.tokens < 1) or args.repeats < 1:
        raise ValueError(f"--tokens/--repeats: expected positive integers, got {args.tokens}/{args.repeats}")
    backends = harness.csv_arg(args.backends, str, "--backends")
    for b in backends:
        if b not in BACKENDS:
            raise ValueError(f"--backends: expected a comma list of {', '.join(BACKENDS)}, got {b!r}")
    if args.isa is not None:
        have = _native_kernels()
        if args.isa not in have:
            raise ValueError(f"--isa: expected a kernel family this CPU has ({', '.join(have)}), got {args.isa!r}")
    harness.setup(args)
    with _isa(args.isa):
        return _run(args, shapes, blocks, sparsities, backends)


@contextlib.contextmanager
def _isa(name: str | None):
    """SPARSE_BSR_ISA=name (read by the C++ kernels at every call) inside the block, restored after."""
    old = os.environ.get("SPARSE_BSR_ISA")
    if name is not None:
        os.environ["SPARSE_BSR_ISA"] = name
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("SPARSE_BSR_ISA", None)
        else:
            os.environ["SPARSE_BSR_ISA"] = old


def _run(args, shapes, blocks, sparsities, backends) -> int:
    dtype = DTYPES[args.dtype]
    rows = []
    family = os.environ.get("SPARSE_BSR_ISA") or "auto"
    tokens_txt = args.tokens if args.tokens is not None else "per-shape"
    print(f"BlockSparseLinear fwd+bwd vs dense nn.Linear: {tokens_txt} tokens, {args.dtype}, "
          f"{torch.get_num_threads()} threads, median of {args.repeats}, round-robin "
          f"(CPU: {torch.backends.cpu.get_cpu_capability()}; native kernels: {', '.join(_native_kernels())}; "
          f"bf16 family: {family})")
    columns = [harness.Column("shape", "shape", width=22), harness.Column("block", "block", width=5),
               harness.Column("sparsity", "sparsity", ".2f", width=8),
               harness.Column("dense_ms", "dense ms", ".1f", width=9)]
    for b in backends:
        columns += [harness.Column(f"{b}_ms", f"{b} ms", ".1f", width=9, missing="n/a"),
                    harness.Column(f"{b}_x", f"{b} x", lambda x: f"{x:.2f}x", width=8, missing="n/a")]
    print(harness.format_table([], columns))
    for name, kind, i, o, default_tokens in shapes:
        tokens = args.tokens if args.tokens is not None else default_tokens
        for b in blocks:
            for s in sparsities:
                got = measure(i, o, b, s, tokens, dtype, args.repeats, backends, args.seed, kind=kind)
                line = {"shape": f"{name} {i}x{o} T{tokens}", "block": b, "sparsity": s, "dense_ms": got[0]["dense_ms"]}
                for want, r in zip(backends, got):
                    r["shape"] = name
                    line.update({f"{want}_ms": r["sparse_ms"], f"{want}_x": r["speedup"]})
                rows.extend(got)
                # one line per case as it is measured: a full run takes minutes
                print(harness.format_table([line], columns, header=False), flush=True)
    summary = []
    for name, *_ in shapes:
        for b in blocks:
            for be_name in backends:
                sel = [r for r in rows if r["shape"] == name and r["block"] == b and r["backend"] == be_name]
                be = break_even(sel)
                if sel and all(r["speedup"] is None for r in sel):
                    summary.append({"shape": name, "block": b, "backend": be_name, "break_even_sparsity": None,
                                    "speedup_at_90": None, "unavailable": sel[0]["unavailable"]})
                    print(f"{name} block {b} backend {be_name}: unavailable ({sel[0]['unavailable']})")
                    continue
                at90 = [r["speedup"] for r in sel if abs(r["sparsity"] - 0.9) < 1e-9 and r["speedup"] is not None]
                summary.append({"shape": name, "block": b, "backend": be_name, "break_even_sparsity": be,
                                "speedup_at_90": at90[0] if at90 else None})
                print(f"{name} block {b} backend {be_name}: break-even sparsity "
                      f"{'not reached' if be is None else f'{be:.2f}'}"
                      + (f", speedup at 90%: {at90[0]:.2f}x" if at90 else ""))
    if args.json:
        harness.write_json(args.json, {"config": harness.config(args),
                                       "cpu": {"capability": torch.backends.cpu.get_cpu_capability(),
                                               "native_kernels": _native_kernels()},
                                       "rows": rows, "summary": summary}, force=args.force)
    return 0
