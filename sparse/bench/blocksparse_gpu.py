"""GPU benchmark of the Triton block-sparse kernels: ``python -m sparse.bench.blocksparse_gpu``.

Needs a CUDA device (exits with a message otherwise). Reports, side by side in one run:

* TFLOPS of ``dsd`` / ``dds`` / ``sdd`` (useful FLOPs only: 2*M*N*K*density) vs cuBLAS dense
  ``torch.matmul`` (2*M*N*K) of the same shapes, across sparsity and block size;
* ``BlockSparseLinear`` fwd+bwd vs ``nn.Linear`` fwd+bwd (BERT-base FFN shapes by default).

Times are medians of CUDA-event-timed runs after a warm-up (which also runs Triton's autotuning).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile

import torch
import torch.nn as nn

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def _time_ms(fn, repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def _mask(r: int, c: int, sparsity: float, gen: torch.Generator) -> torch.Tensor:
    return torch.rand(r, c, generator=gen) >= sparsity


def kernel_rows(m: int, n: int, k: int, blocks, sparsities, dtype, repeats: int, seed: int) -> list[dict]:
    """dsd/dds/sdd TFLOPS vs dense cuBLAS for C[m, n] = A[m, k] @ B[k, n] with the sparse operand masked."""
    import triton_kernels as tk

    dev = torch.device("cuda")
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(m, k, device=dev, dtype=dtype)
    b = torch.randn(k, n, device=dev, dtype=dtype)
    dense_ms = _time_ms(lambda: torch.matmul(a, b), repeats)
    dense_tflops = 2 * m * n * k / dense_ms / 1e9
    rows = []
    for block in blocks:
        for s in sparsities:
            # dsd: sparse A [m, k]; dds: sparse B [k, n]; sdd: sparse C [m, n]
            lay_a = tk.BlockLayout.from_mask(_mask(m // block, k // block, s, gen), block).to(dev)
            lay_b = tk.BlockLayout.from_mask(_mask(k // block, n // block, s, gen), block).to(dev)
            lay_c = tk.BlockLayout.from_mask(_mask(m // block, n // block, s, gen), block).to(dev)
            a_data = lay_a.from_dense(a)
            b_data = lay_b.from_dense(b)
            for kind, lay, fn in (("dsd", lay_a, lambda: tk.dsd(a_data, lay_a, b)),
                                  ("dds", lay_b, lambda: tk.dds(a, b_data, lay_b)),
                                  ("sdd", lay_c, lambda: tk.sdd(a, b, lay_c))):
                density = lay.nnz / max(1, lay.block_shape[0] * lay.block_shape[1])
                ms = _time_ms(fn, repeats)
                rows.append({"kernel": kind, "m": m, "n": n, "k": k, "block": block, "sparsity": s,
                             "density": density, "ms": ms, "tflops": 2 * m * n * k * density / ms / 1e9,
                             "dense_ms": dense_ms, "dense_tflops": dense_tflops, "speedup": dense_ms / ms})
    return rows


def linear_rows(tokens: int, shapes, blocks, sparsities, dtype, repeats: int, seed: int) -> list[dict]:
    """BlockSparseLinear fwd+bwd vs nn.Linear fwd+bwd (input gradient included)."""
    from sparse.nn import BlockSparseLinear

    dev = torch.device("cuda")
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

        dense_ms = _time_ms(lambda: step(dense), repeats)
        for block in blocks:
            for s in sparsities:
                layer = BlockSparseLinear.from_dense(dense, _mask(out_f // block, in_f // block, s, gen))
                ms = _time_ms(lambda: step(layer), repeats)
                rows.append({"in": in_f, "out": out_f, "tokens": tokens, "block": block, "sparsity": s,
                             "dense_ms": dense_ms, "sparse_ms": ms, "speedup": dense_ms / ms})
    return rows


def _csv(text, cast):
    return [cast(v) for v in text.split(",") if v.strip()]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m sparse.bench.blocksparse_gpu", description=__doc__.splitlines()[0])
    p.add_argument("--mnk", default="4096,3072,768;4096,4096,4096",
                   help="';'-separated M,N,K problems for the kernel table")
    p.add_argument("--blocks", default="16,32,64,128")
    p.add_argument("--sparsities", default="0.5,0.7,0.8,0.9,0.95")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    p.add_argument("--tokens", type=int, default=4096)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", dest="json_path", default=None)
    p.add_argument("--force", action="store_true", help="overwrite an existing --json file")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("blocksparse_gpu: no CUDA device visible; this benchmark runs only on a CUDA machine "
              "(use `sparse bench blocksparse` for the CPU path)", file=sys.stderr)
        return 2
    if args.json_path and os.path.exists(args.json_path) and not args.force:
        print(f"blocksparse_gpu: --json {args.json_path} exists; pass --force to overwrite", file=sys.stderr)
        return 2
    dtype = DTYPES[args.dtype]
    blocks = _csv(args.blocks, int)
    sparsities = _csv(args.sparsities, float)
    problems = [tuple(int(v) for v in item.split(",")) for item in args.mnk.split(";") if item.strip()]
    print(f"device {torch.cuda.get_device_name()}, {args.dtype}, median of {args.repeats}")
    print(f"{'kernel':>6} {'M,N,K':>16} {'block':>5} {'sparsity':>8} {'ms':>8} {'TFLOPS':>7} "
          f"{'dense ms':>8} {'dense TF':>8} {'speedup':>7}")
    kernels = []
    for m, n, k in problems:
        for r in kernel_rows(m, n, k, blocks, sparsities, dtype, args.repeats, args.seed):
            kernels.append(r)
            print(f"{r['kernel']:>6} {f'{m},{n},{k}':>16} {r['block']:>5} {r['sparsity']:>8.2f} {r['ms']:>8.3f} "
                  f"{r['tflops']:>7.1f} {r['dense_ms']:>8.3f} {r['dense_tflops']:>8.1f} {r['speedup']:>6.2f}x",
                  flush=True)
    print(f"\nBlockSparseLinear fwd+bwd vs nn.Linear, {args.tokens} tokens")
    print(f"{'in x out':>10} {'block':>5} {'sparsity':>8} {'dense ms':>9} {'sparse ms':>9} {'speedup':>8}")
    linears = []
    for r in linear_rows(args.tokens, [(768, 3072), (3072, 768)], blocks, sparsities, dtype, args.repeats,
                         args.seed):
        linears.append(r)
        print(f"{str(r['in']) + 'x' + str(r['out']):>10} {r['block']:>5} {r['sparsity']:>8.2f} "
              f"{r['dense_ms']:>9.3f} {r['sparse_ms']:>9.3f} {r['speedup']:>7.2f}x", flush=True)
    if args.json_path:
        folder = os.path.dirname(os.path.abspath(args.json_path))
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".blocksparse-gpu-", suffix=".json")
        with os.fdopen(fd, "w") as f:
            json.dump({"config": vars(args), "kernels": kernels, "linear": linears}, f, indent=1)
        os.replace(tmp, args.json_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
