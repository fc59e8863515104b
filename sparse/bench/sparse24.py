"""2:4 on NVIDIA GPUs: SparseLinear24 fwd+bwd vs nn.Linear (BERT-base and ViT-L MLP shapes, bf16/fp16), the fused
exact transposable prune+compress vs torch's greedy ``_sparse_semi_structured_tile``, and (any device) the kept
magnitude of the exact transposable 2:4 mask vs the greedy 4x4 tile rule on MiniLM's real weights and on random ones.

Every GPU timing is preceded by a correctness check (outputs and gradients against masked dense in fp32, metadata
against torch's CUTLASS converter, masks against the exact solver); a failed check stops the run (exit 1). Without
a CUDA device the GPU part reports ``unavailable`` with the reason and the kept-magnitude table still runs.
"""
from __future__ import annotations

import logging

import torch
import torch.nn as nn

from . import harness

log = logging.getLogger(__name__)

DESCRIPTION = "2:4: SparseLinear24 fwd+bwd vs nn.Linear, exact transposable prune+compress vs torch's greedy tile op"
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
SHAPES = {"bert-base": [(768, 3072), (3072, 768)], "vit-l": [(1024, 4096), (4096, 1024)]}


# ------------------------------------------------------------------------------------------------ kept magnitude
def greedy_tile_mask_24(w: torch.Tensor) -> torch.Tensor:
    """CPU port of the greedy 4x4 tile rule of ``torch._sparse_semi_structured_tile`` (torchao's 2:4 training):
    per aligned 4x4 tile visit the 16 entries by descending ``|w|`` (stable order) and keep one while its row and
    its column have fewer than 2 kept. May leave a tile with fewer than 8 kept. ``w [R, C]``, R and C % 4 == 0 ->
    bool mask."""
    r, c = w.shape
    t = w.detach().float().abs().reshape(r // 4, 4, c // 4, 4).permute(0, 2, 1, 3).reshape(-1, 16)
    order = torch.argsort(t, dim=1, descending=True, stable=True)
    n = t.shape[0]
    rows = torch.zeros(n, 4, dtype=torch.int64)
    cols = torch.zeros(n, 4, dtype=torch.int64)
    keep = torch.zeros(n, 16, dtype=torch.bool)
    idx = torch.arange(n)
    for k in range(16):
        e = order[:, k]
        i, j = e // 4, e % 4
        ok = (rows[idx, i] < 2) & (cols[idx, j] < 2)
        keep[idx, e] = ok
        rows[idx, i] += ok.long()
        cols[idx, j] += ok.long()
    return keep.reshape(r // 4, c // 4, 4, 4).permute(0, 2, 1, 3).reshape(r, c).to(w.device)


def kept_fraction(w: torch.Tensor, mask: torch.Tensor) -> float:
    """Fraction of ``sum |w|`` that ``mask`` keeps."""
    a = w.detach().float().abs()
    return float((a * mask).sum() / a.sum())


def kept_rows(weights: dict[str, torch.Tensor]) -> dict:
    """Kept magnitude of exact transposable 2:4, greedy 4x4 tiles and plain (non-transposable) 2:4 over
    ``weights`` (name -> 2-D tensor, sides % 4): totals and the greedy tiles left incomplete."""
    from ..ops import mask_24

    tot = ex = gr = rw = 0.0
    incomplete = tiles = 0
    for w in weights.values():
        w = w.float()
        a = w.abs()
        g = greedy_tile_mask_24(w)
        tot += float(a.sum())
        ex += float((a * mask_24(w, True)).sum())
        gr += float((a * g).sum())
        rw += float((a * mask_24(w, False)).sum())
        per = g.reshape(w.shape[0] // 4, 4, w.shape[1] // 4, 4).sum(dim=(1, 3))
        incomplete += int((per < 8).sum())
        tiles += per.numel()
    return {"matrices": len(weights), "exact": ex / tot, "greedy": gr / tot, "rows_2of4": rw / tot,
            "gain_pct": 100.0 * (ex - gr) / gr, "greedy_incomplete_tiles": incomplete / max(tiles, 1)}


def minilm_weights() -> dict[str, torch.Tensor]:
    """The 2-D Linear weights of the packaged MiniLM-L6 (safetensors; ValueError if the package is missing)."""
    import os

    from safetensors.torch import load_file

    from ..data import minilm_path

    sd = load_file(os.path.join(minilm_path(), "model.safetensors"))
    return {k: v for k, v in sd.items() if v.dim() == 2 and k.endswith(".weight") and "embeddings" not in k
            and v.shape[0] % 4 == 0 and v.shape[1] % 4 == 0}


# ------------------------------------------------------------------------------------------------ GPU
def gpu_unavailable() -> str | None:
    """None if the GPU part can run here, else why not."""
    from ..ops.sparse24 import native_reason

    if not torch.cuda.is_available():
        return "no CUDA device visible (torch.cuda.is_available() is False)"
    why = native_reason()
    if why is not None:
        return why
    from .._backends import ext

    if not ext().with_cuda():
        return "sparse._C was built without CUDA (SPARSE_BUILD_CUDA=1 with nvcc and a CUDA torch)"
    if torch.cuda.get_device_capability() < (8, 0):
        return f"2:4 sparse tensor cores need sm_80+, this GPU is sm_{''.join(map(str, torch.cuda.get_device_capability()))}"
    return None


def check_correctness(dtype: torch.dtype, device: torch.device, seed: int = 0) -> list[str]:
    """Problems found (empty: all good): layout vs torch's converter, mask vs exact solver, SparseLinear24 vs masked
    dense (fp32 reference) for outputs and gradients, incl. MVUE's expectation-free shape check."""
    from torch.sparse._semi_structured_conversions import sparse_semi_structured_from_dense_cutlass

    from ..masks import transposable_mask
    from ..nn import SparseLinear24
    from ..ops import compress_24, decompress_24, mask_24

    bad = []
    g = torch.Generator(device="cpu").manual_seed(seed)
    w = torch.randn(256, 512, generator=g).to(device=device, dtype=dtype)
    v, m, vt, mt = compress_24(w, transposable=True)
    mask = mask_24(w, True)
    if not torch.equal(mask.cpu(), transposable_mask(w.float().cpu(), 2, 4, method="exact")):
        bad.append("CUDA transposable mask != exact solver")
    rv, rm = sparse_semi_structured_from_dense_cutlass((w * mask).cpu())
    if not (torch.equal(v.cpu(), rv) and torch.equal(m.cpu(), rm)):
        bad.append("CUDA compression != torch's CUTLASS converter")
    if not torch.equal(decompress_24(vt, mt), (w * mask).t()):
        bad.append("compressed W^T does not decompress to (W * mask)^T")
    for in_f, out_f in [(512, 256)]:
        lin = nn.Linear(in_f, out_f, device=device, dtype=dtype)
        ref_w = lin.weight.detach().float().clone()
        mod = SparseLinear24.from_dense(lin)
        x = torch.randn(100, in_f, generator=g).to(device=device, dtype=dtype).requires_grad_()
        y = mod(x)
        gy = torch.randn_like(y)
        y.backward(gy)
        wm = (ref_w * mod.mask).requires_grad_()
        xr = x.detach().float().requires_grad_()
        yr = xr @ wm.t() + lin.bias.detach().float()
        yr.backward(gy.float())
        tol = 2e-2 if dtype == torch.bfloat16 else 5e-3
        for name, a, b in (("output", y, yr), ("dX", x.grad, xr.grad), ("dW", mod.weight.grad, wm.grad * mod.mask)):
            err = float((a.float() - b).abs().max() / (b.abs().max() + 1e-6))
            if not err <= tol:
                bad.append(f"SparseLinear24 {name}: relative error {err:.3g} > {tol}")
    return bad


def linear_rows(tokens, shapes, dtype, repeats, device, mvue: bool) -> list[dict]:
    from ..nn import SparseLinear24

    rows = []
    for in_f, out_f in shapes:
        dense = nn.Linear(in_f, out_f, device=device, dtype=dtype)
        sparse = SparseLinear24.from_dense(nn.Linear(in_f, out_f, device=device, dtype=dtype),
                                           grad_sparsity="mvue" if mvue else None)
        x = torch.randn(tokens, in_f, device=device, dtype=dtype, requires_grad=True)
        gy = torch.randn(tokens, out_f, device=device, dtype=dtype)

        def step(mod, recompress=False):
            if recompress:
                mod._cache = None  # a training step changed the weight: re-pack (no mask search)
            mod(x).backward(gy)

        row = {"in": in_f, "out": out_f, "tokens": tokens, "mvue": mvue}
        row["dense_ms"] = harness.time_fn(lambda: step(dense), repeats=repeats, warmup=3, device=device).median_ms
        row["sparse_ms"] = harness.time_fn(lambda: step(sparse, True), repeats=repeats, warmup=3, device=device).median_ms
        row["sparse_static_ms"] = harness.time_fn(lambda: step(sparse), repeats=repeats, warmup=3,
                                                  device=device).median_ms
        row["speedup"] = row["dense_ms"] / row["sparse_ms"]
        rows.append(row)
    return rows


def prune_rows(sizes, dtype, repeats, device) -> list[dict]:
    from ..ops import sparse24 as ops24

    rows = []
    for n in sizes:
        w = torch.randn(n, n, device=device, dtype=dtype)
        ours = harness.time_fn(lambda: ops24._compress_t_op(w), repeats=repeats, warmup=3, device=device).median_ms
        theirs = harness.time_fn(lambda: torch._sparse_semi_structured_tile(w, algorithm="", use_cutlass=True),
                                 repeats=repeats, warmup=3, device=device).median_ms
        rows.append({"shape": f"{n}x{n}", "exact_ms": ours, "greedy_torch_ms": theirs, "ratio": ours / theirs})
    return rows


# ------------------------------------------------------------------------------------------------ CLI
def add_arguments(parser) -> None:
    parser.add_argument("--dtypes", default="bf16,fp16", help="comma list of bf16, fp16")
    parser.add_argument("--models", default="bert-base,vit-l", help=f"comma list of {', '.join(SHAPES)}")
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--prune-sizes", default="1024,4096", help="square W sizes for the prune+compress timing")
    parser.add_argument("--no-minilm", action="store_true", help="kept-magnitude table on random weights only")
    harness.add_common_arguments(parser, devices=("cuda", "cpu"))


LINEAR_COLUMNS = (
    harness.Column("dtype", "dtype", width=5), harness.Column("in_out", "in x out", width=10),
    harness.Column("mvue", "mvue", width=5), harness.Column("dense_ms", "dense ms", ".3f", width=9),
    harness.Column("sparse_ms", "2:4 ms", ".3f", width=9), harness.Column("sparse_static_ms", "2:4 static", ".3f", width=10),
    harness.Column("speedup", "speedup", lambda x: f"{x:.2f}x", width=8))
PRUNE_COLUMNS = (
    harness.Column("dtype", "dtype", width=5), harness.Column("shape", "W", width=10),
    harness.Column("exact_ms", "exact T ms", ".4f", width=10), harness.Column("greedy_torch_ms", "torch greedy ms", ".4f", width=15),
    harness.Column("ratio", "ratio", lambda x: f"{x:.2f}x", width=6))
KEPT_COLUMNS = (
    harness.Column("weights", "weights", "", "<", 12), harness.Column("matrices", "n", width=3),
    harness.Column("exact", "exact T", ".4f", width=8), harness.Column("greedy", "greedy T", ".4f", width=8),
    harness.Column("rows_2of4", "2:4 rows", ".4f", width=8), harness.Column("gain_pct", "gain %", ".2f", width=7),
    harness.Column("greedy_incomplete_tiles", "greedy<8", ".3f", width=8))


def run(args) -> int:
    dtypes = harness.csv_choices(args.dtypes, DTYPES, "--dtypes")
    models = harness.csv_choices(args.models, SHAPES, "--models")
    sizes = harness.csv_arg(args.prune_sizes, int, "--prune-sizes")
    if args.tokens < 1 or args.repeats < 1 or any(s < 32 or s % 32 for s in sizes):
        raise ValueError("--tokens/--repeats: expected positive integers; --prune-sizes: multiples of 32")
    want_cuda = args.device == "cuda"
    why = gpu_unavailable() if want_cuda else "--device cpu"
    if want_cuda and why is not None:
        args.device = "cpu"  # the kept-magnitude part still runs
    harness.setup(args)
    out = {"config": harness.config(args), "gpu": {"available": why is None, "reason": why}}

    kept = [{"weights": "random", **kept_rows({"r": torch.randn(1024, 1024, generator=torch.Generator().manual_seed(0))})}]
    if not args.no_minilm:
        try:
            kept.append({"weights": "MiniLM-L6", **kept_rows(minilm_weights())})
        except Exception as exc:  # the data package is optional
            log.warning("MiniLM weights unavailable: %s", exc)
    print("kept |w| fraction: exact transposable 2:4 vs greedy 4x4 tiles (torch's rule) vs plain 2:4 rows")
    print(harness.format_table(kept, KEPT_COLUMNS))
    out["kept"] = kept
    if why is not None:
        print(f"\nGPU timing: unavailable ({why})")
    else:
        device = torch.device("cuda")
        print(f"\ndevice {torch.cuda.get_device_name()}, median of {args.repeats}; correctness first")
        for d in dtypes:
            bad = check_correctness(DTYPES[d], device)
            if bad:
                print(f"correctness check failed ({d}): " + "; ".join(bad))
                return 1
        print("correctness: ok\n")
        linears, prunes = [], []
        print(harness.format_table([], LINEAR_COLUMNS))
        for d in dtypes:
            for mname in models:
                for mvue in (False, True):
                    for r in linear_rows(args.tokens, SHAPES[mname], DTYPES[d], args.repeats, device, mvue):
                        r = {**r, "dtype": d, "model": mname, "in_out": f"{r['in']}x{r['out']}"}
                        linears.append(r)
                        print(harness.format_table([r], LINEAR_COLUMNS, header=False), flush=True)
        print()
        print(harness.format_table([], PRUNE_COLUMNS))
        for d in dtypes:
            for r in prune_rows(sizes, DTYPES[d], args.repeats, device):
                r = {**r, "dtype": d}
                prunes.append(r)
                print(harness.format_table([r], PRUNE_COLUMNS, header=False), flush=True)
        out["linear"], out["prune"] = linears, prunes
    if args.json:
        harness.write_json(args.json, out, force=args.force)
    return 0
