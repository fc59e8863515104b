"""``sparse bench blocksparse-gpu``: the Triton block-sparse kernels on a CUDA device.

Needs a CUDA device (a one-line error otherwise; ``sparse bench blocksparse`` is the CPU benchmark).
Reports, side by side in one run:

* TFLOPS of ``dsd`` / ``dds`` / ``sdd`` (useful FLOPs only: 2*M*N*K*density) vs cuBLAS dense
  ``torch.matmul`` (2*M*N*K) of the same shapes, across sparsity and block size;
* ``BlockSparseLinear`` fwd+bwd vs ``nn.Linear`` fwd+bwd (BERT-base FFN shapes by default).

Times are medians of CUDA-event-timed runs after a warm-up (which also runs Triton's autotuning).
The kernels run through :mod:`sparse.ops` with the ``triton`` backend forced, as the library calls them.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from sparse.bench import harness
from sparse.ops import BLOCK_SIZES, BlockLayout, use_backend

DESCRIPTION = "Triton block-sparse kernels vs cuBLAS (CUDA)"

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
WARMUP = 3  # also runs Triton's autotuning


def _time_ms(fn, repeats: int, device) -> float:
    with use_backend("triton"):
        return harness.time_fn(fn, repeats=repeats, warmup=WARMUP, device=device).median_ms


def _mask(r: int, c: int, sparsity: float, gen: torch.Generator) -> torch.Tensor:
    return torch.rand(r, c, generator=gen) >= sparsity


def kernel_rows(m: int, n: int, k: int, blocks, sparsities, dtype, repeats: int, seed: int,
                device="cuda") -> list[dict]:
    """dsd/dds/sdd TFLOPS vs dense cuBLAS for C[m, n] = A[m, k] @ B[k, n] with the sparse operand masked.

    ``device`` is CUDA but for tests (CPU tensors under ``TRITON_INTERPRET=1``)."""
    from sparse.ops.block_sparse import dds, dsd, sdd

    dev = torch.device(device)
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(m, k, device=dev, dtype=dtype)
    b = torch.randn(k, n, device=dev, dtype=dtype)
    dense_ms = _time_ms(lambda: torch.matmul(a, b), repeats, dev)
    dense_tflops = 2 * m * n * k / dense_ms / 1e9
    rows = []
    for block in blocks:
        for s in sparsities:
            # dsd: sparse A [m, k]; dds: sparse B [k, n]; sdd: sparse C [m, n]
            lay_a = BlockLayout.from_mask(_mask(m // block, k // block, s, gen), block).to(dev)
            lay_b = BlockLayout.from_mask(_mask(k // block, n // block, s, gen), block).to(dev)
            lay_c = BlockLayout.from_mask(_mask(m // block, n // block, s, gen), block).to(dev)
            a_data = lay_a.from_dense(a)
            b_data = lay_b.from_dense(b)
            for kind, lay, fn in (("dsd", lay_a, lambda: dsd(a_data, lay_a, b)),
                                  ("dds", lay_b, lambda: dds(a, b_data, lay_b)),
                                  ("sdd", lay_c, lambda: sdd(a, b, lay_c))):
                density = lay.nnz / max(1, lay.block_shape[0] * lay.block_shape[1])
                ms = _time_ms(fn, repeats, dev)
                rows.append({"kernel": kind, "m": m, "n": n, "k": k, "block": block, "sparsity": s,
                             "density": density, "ms": ms, "tflops": 2 * m * n * k * density / ms / 1e9,
                             "dense_ms": dense_ms, "dense_tflops": dense_tflops, "speedup": dense_ms / ms})
    return rows


def linear_rows(tokens: int, shapes, blocks, sparsities, dtype, repeats: int, seed: int,
                device="cuda") -> list[dict]:
    """BlockSparseLinear fwd+bwd vs nn.Linear fwd+bwd (input gradient included)."""
    from sparse.nn import BlockSparseLinear

    dev = torch.device(device)
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for in_f, out_f in shapes:
        dense = nn.Linear(in_f, out_f, device=dev, dtype=dtype)
        x = torch.randn(tokens, in_f, device=dev, dtype=dtype, requires_grad=True)
        g = torch.randn(tokens, out_f, device=dev, dtype=dtype)

        def step(layer):
            x.grad = None
            for p in layer.parameters():
                p.grad = None
            layer(x).backward(g)

        dense_ms = _time_ms(lambda: step(dense), repeats, dev)
        for block in blocks:
            for s in sparsities:
                layer = BlockSparseLinear.from_dense(dense, _mask(out_f // block, in_f // block, s, gen))
                ms = _time_ms(lambda: step(layer), repeats, dev)
                rows.append({"in": in_f, "out": out_f, "tokens": tokens, "block": block, "sparsity": s,
                             "dense_ms": dense_ms, "sparse_ms": ms, "speedup": dense_ms / ms})
    return rows


def _problems(text: str) -> list[tuple[int, int, int]]:
    out = []
    for item in text.split(";"):
        if not item.strip():
            continue
        try:
            m, n, k = (int(v) for v in item.split(","))
        except ValueError:
            raise ValueError(f"--mnk: expected ';'-separated M,N,K triples, got {item!r}") from None
        out.append((m, n, k))
    return out


def add_arguments(parser) -> None:
    parser.add_argument("--mnk", default="4096,3072,768;4096,4096,4096",
                        help="';'-separated M,N,K problems for the kernel table")
    parser.add_argument("--blocks", default="16,32,64,128")
    parser.add_argument("--sparsities", default="0.5,0.7,0.8,0.9,0.95")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    harness.add_common_arguments(parser, devices=("cuda",))


KERNEL_COLUMNS = (
    harness.Column("kernel", "kernel", width=6), harness.Column("mnk", "M,N,K", width=16),
    harness.Column("block", "block", width=5), harness.Column("sparsity", "sparsity", ".2f", width=8),
    harness.Column("ms", "ms", ".3f", width=8), harness.Column("tflops", "TFLOPS", ".1f", width=7),
    harness.Column("dense_ms", "dense ms", ".3f", width=8), harness.Column("dense_tflops", "dense TF", ".1f", width=8),
    harness.Column("speedup", "speedup", lambda x: f"{x:.2f}x", width=7),
)
LINEAR_COLUMNS = (
    harness.Column("in_out", "in x out", width=10), harness.Column("block", "block", width=5),
    harness.Column("sparsity", "sparsity", ".2f", width=8), harness.Column("dense_ms", "dense ms", ".3f", width=9),
    harness.Column("sparse_ms", "sparse ms", ".3f", width=9),
    harness.Column("speedup", "speedup", lambda x: f"{x:.2f}x", width=8),
)


def run(args) -> int:
    dtype = DTYPES[args.dtype]
    blocks = harness.csv_arg(args.blocks, int, "--blocks")
    sparsities = harness.csv_arg(args.sparsities, float, "--sparsities")
    problems = _problems(args.mnk)
    for s in sparsities:
        if not 0.0 <= s < 1.0:
            raise ValueError(f"--sparsities: expected values in [0, 1), got {s}")
    for b in blocks:
        if b not in BLOCK_SIZES:
            raise ValueError(f"--blocks: expected block sizes among {', '.join(map(str, BLOCK_SIZES))}, got {b}")
        for m, n, k in problems:
            if m % b or n % b or k % b:
                raise ValueError(f"--mnk: {m},{n},{k} is not a multiple of block {b}")
    if args.tokens < 1 or args.repeats < 1:
        raise ValueError(f"--tokens/--repeats: expected positive integers, got {args.tokens}/{args.repeats}")
    harness.setup(args)
    print(f"device {torch.cuda.get_device_name()}, {args.dtype}, median of {args.repeats}")
    print(harness.format_table([], KERNEL_COLUMNS))
    kernels = []
    for m, n, k in problems:
        for r in kernel_rows(m, n, k, blocks, sparsities, dtype, args.repeats, args.seed):
            kernels.append(r)
            print(harness.format_table([{**r, "mnk": f"{m},{n},{k}"}], KERNEL_COLUMNS, header=False), flush=True)
    print(f"\nBlockSparseLinear fwd+bwd vs nn.Linear, {args.tokens} tokens")
    print(harness.format_table([], LINEAR_COLUMNS))
    linears = []
    for r in linear_rows(args.tokens, [(768, 3072), (3072, 768)], blocks, sparsities, dtype, args.repeats,
                         args.seed):
        linears.append(r)
        print(harness.format_table([{**r, "in_out": f"{r['in']}x{r['out']}"}], LINEAR_COLUMNS, header=False),
              flush=True)
    if args.json:
        harness.write_json(args.json, {"config": harness.config(args), "kernels": kernels, "linear": linears},
                           force=args.force)
    return 0
