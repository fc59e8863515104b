"""CPU paths of the block-sparse matmuls: the C++ kernels of ``sparse._C`` and a pure-torch fallback.

Native path (backend ``csrc-cpu``, :func:`native_dds` / :func:`native_dsd` / :func:`native_sdd`): the C++
kernels in ``csrc/cpu/bsr_*.cpp``. Every kept ``B x B`` block is multiplied where it lies in the dense
operand (no gathers of activations): bf16 with B a multiple of 32 runs hand-written AMX tile kernels that
keep a 32 x 32 fp32 output tile in the AMX registers across all kept blocks of an output block (the same
drivers with AVX512-BF16 ``vdpbf16ps`` microkernels on CPUs without AMX, e.g. AMD Zen 4/5); other cases
(fp32, B=16) call ATen's ``cpublas::brgemm`` (oneDNN ukernels) per block run. ``SPARSE_BSR_ISA=amx``,
``avx512bf16`` or ``brgemm`` narrows the bf16 choice to one family (:func:`native_kernels` lists them).
:func:`native_usable` says when it applies (extension built, CPU tensors, a dtype the CPU runs natively:
fp32 always, bf16/fp16 only where oneDNN can pack them, i.e. not fp16 on CPUs without AMX-FP16).

Fallback (backend ``torch``, :func:`dds` / :func:`dsd` / :func:`sdd`): batched gather + one GEMM per
row group, pure torch, any device. The sparse operand's non-empty block rows are sorted by their number
of blocks and split into at most ``MAX_GROUPS`` groups (exact DP on padded work + a per-group price);
each group is padded to its largest count with zero blocks; per group one ``index_select``, one batched
matmul and one ``index_copy_``. It is correct but slow: 0.15-0.25x of dense bf16 ``nn.Linear`` on the
BERT-base FFN benchmark, because dense bf16 runs on AMX while the gathers move the activations around.

Same signatures and semantics as the public functions of :mod:`sparse.ops.block_sparse`.
Measured figures: ``sparse bench blocksparse`` (both backends side by side against dense).
"""
from __future__ import annotations

import math
import os

import torch

from .._backends import ext
from .layout import BlockLayout

# Tokens per task of the native DDS and per K-chunk of the native SDD: the activation slice of a task
# stays in L1/L2, the packed operands of a chunk in L2. Measured on the BERT-base FFN shapes (4096
# tokens, bf16, block 32): DDS 64 beat 256 by 10-30 % at 90 % sparsity and tied at 50 %; SDD 128 vs 256
# won at 90 % but lost 10 % at 50 %, so 256.
DDS_M_TILE = 64
SDD_K_TILE = 256

_NATIVE_DTYPES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


def _native_ext():
    mod = ext()
    if mod is None:
        return None, "sparse._C is not built"
    if not all(hasattr(mod, f) for f in ("bsr_dds", "bsr_sdd", "bsr_brgemm_supported")):
        return None, "sparse._C predates the block-sparse kernels; rebuild it"
    return mod, None


def native_kernels() -> list[str]:
    """Kernel families of the native path on this CPU: ``amx``, ``avx512bf16`` (bf16 tile kernels),
    ``brgemm``; empty when ``sparse._C`` is not built."""
    mod = ext()
    if mod is None:
        return []
    return list(mod.bsr_cpu_kernels()) if hasattr(mod, "bsr_cpu_kernels") else ["brgemm"]


# (dtype, block, SPARSE_BSR_ISA) -> whether the extension runs it natively: a pybind call per op call
# would be a few us of every small layer's fixed cost; the environment variable is part of the key
# because it can change at run time (tests, `sparse bench blocksparse --isa`).
_SUPPORTED: dict[tuple, bool] = {}


def native_usable(*args, **kwargs) -> str | None:
    """None if the C++ path can run a call with these tensors, else the reason (for the dispatcher)."""
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    mod, why = _native_ext()
    if mod is None:
        return why
    dev = tensors[0].device
    if dev.type != "cpu":
        return f"tensors on {dev}, not CPU"
    dtype = tensors[0].dtype
    if dtype not in _NATIVE_DTYPES:
        return f"dtype {dtype}: expected one of {', '.join(map(str, _NATIVE_DTYPES))}"
    layout = next((a for a in args if isinstance(a, BlockLayout)), None)
    block = layout.block if layout is not None else 0
    key = (dtype, block, os.environ.get("SPARSE_BSR_ISA"))
    ok = _SUPPORTED.get(key)
    if ok is None:
        ok = _SUPPORTED[key] = bool(mod.bsr_brgemm_supported(_NATIVE_DTYPES[dtype], block))
    if not ok:
        return (f"dtype {dtype} with block {block} has no native kernel on this CPU (kernels here: "
                f"{', '.join(native_kernels())}; "
                f"bf16 needs AMX or AVX512-BF16 and a block multiple of 32, or oneDNN packing)")
    return None


_NO_DPTR = torch.empty(0, dtype=torch.int32)   # "data index = list index" (a constant: no allocation per call)


def _meta_i32(layout: BlockLayout):
    """The layout's index tensors as the kernels take them (int32, contiguous, CPU): validated layouts
    already are, so this copies nothing."""
    return tuple(t if t.dtype == torch.int32 and t.device.type == "cpu" and t.is_contiguous()
                 else t.to("cpu", torch.int32).contiguous() for t in layout.tensors())


def _dds_2d(mod, a2: torch.Tensor, data: torch.Tensor, layout: BlockLayout, trans_b: bool) -> torch.Tensor:
    crow, col, _, ccol, row_t, perm_t = _meta_i32(layout)
    if trans_b:  # op(S) = S^T: output block j is a block row of S, its blocks transposed
        return mod.bsr_dds(a2, data, crow, col, _NO_DPTR, True, DDS_M_TILE)
    return mod.bsr_dds(a2, data, ccol, row_t, perm_t, False, DDS_M_TILE)


def native_dds(a: torch.Tensor, b_data: torch.Tensor, layout: BlockLayout, trans_a: bool = False,
               trans_b: bool = False) -> torch.Tensor:
    """``op(a) @ op(S)`` -> ``[..., M, N]`` by the C++ kernels."""
    mod, why = _native_ext()
    if mod is None:
        raise RuntimeError(why)
    opa = a.transpose(-1, -2) if trans_a else a
    lead, (m, k) = tuple(opa.shape[:-2]), tuple(opa.shape[-2:])
    n = layout.shape[0] if trans_b else layout.shape[1]
    data = b_data.contiguous()
    if data.dim() == 3:  # blocks shared by the batch: fold every leading dim into the rows
        out = _dds_2d(mod, opa.reshape(math.prod(lead) * m, k).contiguous(), data, layout, trans_b)
        return out.view(*lead, m, n)
    a3 = opa.reshape(math.prod(lead), m, k)
    d3 = data.reshape(math.prod(lead), *data.shape[-3:])
    out = [_dds_2d(mod, a3[i].contiguous(), d3[i], layout, trans_b) for i in range(a3.shape[0])]
    return torch.stack(out).view(*lead, m, n) if out else a.new_zeros(*lead, m, n)


def native_linear(x: torch.Tensor, w_data: torch.Tensor, bias: torch.Tensor | None,
                  layout: BlockLayout) -> torch.Tensor:
    """``x @ W^T + bias`` -> ``[T, out]`` for ``x [T, in]``, block-sparse ``W [out, in]``, bias fused
    into the kernel's output rounding (one pass over the output less than a separate add)."""
    mod, why = _native_ext()
    if mod is None:
        raise RuntimeError(why)
    crow, col = _meta_i32(layout)[:2]
    return mod.bsr_dds(x.contiguous(), w_data.contiguous(), crow, col, _NO_DPTR, True, DDS_M_TILE, bias)


def native_sdd_rowsum(a: torch.Tensor, b: torch.Tensor, layout: BlockLayout, trans_a: bool = False,
                      trans_b: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sdd(a, b), op(a).sum(-1))`` for 2-D operands: the row sums come from the pass that packs op(a)
    (``dW`` and the bias gradient of a linear layer in one go)."""
    mod, why = _native_ext()
    if mod is None:
        raise RuntimeError(why)
    crow, col, _, ccol, row_t, perm_t = _meta_i32(layout)
    m = a.shape[-1] if trans_a else a.shape[-2]
    sums = torch.zeros(m, dtype=torch.float32)
    blocks = mod.bsr_sdd(a, b, crow, col, ccol, row_t, perm_t, layout.block, bool(trans_a), bool(trans_b),
                         SDD_K_TILE, sums)
    return blocks, sums.to(a.dtype)


def native_dsd(a_data: torch.Tensor, layout: BlockLayout, b: torch.Tensor, trans_a: bool = False,
               trans_b: bool = False) -> torch.Tensor:
    """``op(S) @ op(b)`` -> ``[..., M, N]`` as ``(op(b)^T @ op(S)^T)^T`` by :func:`native_dds`."""
    ct = native_dds(b, a_data, layout, trans_a=not trans_b, trans_b=not trans_a)
    return ct.transpose(-1, -2).contiguous()


def native_sdd(a: torch.Tensor, b: torch.Tensor, layout: BlockLayout, trans_a: bool = False,
               trans_b: bool = False) -> torch.Tensor:
    """Kept blocks of ``op(a) @ op(b)`` -> ``[..., nnz, B, B]`` by the C++ kernels."""
    mod, why = _native_ext()
    if mod is None:
        raise RuntimeError(why)
    crow, col, _, ccol, row_t, perm_t = _meta_i32(layout)
    bs = layout.block
    lead = tuple(a.shape[:-2])
    z = math.prod(lead)
    a3, b3 = a.reshape(z, *a.shape[-2:]), b.reshape(z, *b.shape[-2:])
    out = [mod.bsr_sdd(a3[i], b3[i], crow, col, ccol, row_t, perm_t, bs, bool(trans_a), bool(trans_b), SDD_K_TILE)
           for i in range(a3.shape[0])]
    if not out:
        return a.new_zeros(*lead, layout.nnz, bs, bs)
    return torch.stack(out).view(*lead, layout.nnz, bs, bs)


MAX_GROUPS = 3


def _groups(counts: torch.Tensor, max_groups: int = MAX_GROUPS) -> list[tuple[int, int]]:
    """Split the non-empty rows, sorted by block count, into <= max_groups contiguous runs.

    Returns ``[(start, end)]`` into the sorted order; each run is padded to its largest count. Exact
    DP minimising padded blocks plus a fixed per-group price (each group is three more ops).
    """
    c = sorted(int(v) for v in counts.tolist() if v > 0)
    n = len(c)
    if n == 0:
        return []
    price = max(1, sum(c) // 8)
    inf = float("inf")
    # best[g][i]: cost of the first i rows in g groups; rows sorted ascending so a run's pad is c[i-1].
    best = [[inf] * (n + 1) for _ in range(max_groups + 1)]
    back = [[0] * (n + 1) for _ in range(max_groups + 1)]
    best[0][0] = 0
    for g in range(1, max_groups + 1):
        for i in range(1, n + 1):
            for j in range(i):
                if best[g - 1][j] == inf:
                    continue
                cost = best[g - 1][j] + (i - j) * c[i - 1] + price
                if cost < best[g][i]:
                    best[g][i], back[g][i] = cost, j
    g = min(range(1, max_groups + 1), key=lambda k: best[k][n])
    runs, i = [], n
    while g > 0:
        j = back[g][i]
        runs.append((j, i))
        i, g = j, g - 1
    return runs[::-1]


def _plan(seg: torch.Tensor, idx: torch.Tensor, dptr: torch.Tensor | None):
    """Row groups of the sparse rows given by ``seg`` (pointers), ``idx`` and ``dptr`` (data index).

    Returns a list of ``(rows [n], idx [n, k], dptr [n, k], valid [n, k])`` (int64/bool on CPU): rows of
    similar block counts, each padded to the group's largest count ``k`` (padding: index 0, invalid).
    """
    seg = seg.to("cpu", torch.int64)
    idx = idx.to("cpu", torch.int64)
    dptr = None if dptr is None else dptr.to("cpu", torch.int64)
    counts = seg[1:] - seg[:-1]
    order = torch.argsort(counts, stable=True)
    order = order[counts[order] > 0]
    out = []
    for a, b in _groups(counts):
        rows = order[a:b]
        k = int(counts[rows].max())
        pos = seg[:-1][rows][:, None] + torch.arange(k)
        valid = pos < seg[1:][rows][:, None]
        pos = torch.where(valid, pos, torch.zeros_like(pos))
        g_idx = torch.where(valid, idx[pos], torch.zeros_like(pos))
        g_dptr = pos if dptr is None else dptr[pos]
        out.append((rows, g_idx, g_dptr, valid))
    return out


def _row_side(layout: BlockLayout, trans: bool):
    """Row-major walk over op(S): (seg, idx, dptr) for S itself, the transpose metadata for S^T."""
    if trans:
        return layout.ccol, layout.row_t, layout.perm_t
    return layout.crow, layout.col, None


def dsd(a_data: torch.Tensor, layout: BlockLayout, b: torch.Tensor, trans_a: bool = False,
        trans_b: bool = False) -> torch.Tensor:
    """``op(S) @ op(b)`` -> ``[..., M, N]`` (pure torch)."""
    bs = layout.block
    m, k = layout.shape[::-1] if trans_a else layout.shape
    lead = tuple(b.shape[:-2])
    opb = b.transpose(-1, -2) if trans_b else b
    n = opb.shape[-1]
    b3 = opb.reshape(math.prod(lead), k, n).contiguous()
    z = b3.shape[0]
    if layout.nnz == 0 or z * m * n == 0:
        return b.new_zeros(*lead, m, n)
    dev = b.device
    out = b3.new_zeros(z, m // bs, bs, n)
    xb = b3.view(z, k // bs, bs, n)
    for rows, g_idx, g_dptr, valid in _plan(*_row_side(layout, trans_a)):
        rows, g_idx, g_dptr, valid = (t.to(dev) for t in (rows, g_idx, g_dptr, valid))
        nr, kc = g_idx.shape
        blocks = a_data[..., g_dptr.view(-1), :, :]  # [(Z,) nr*kc, B, B]
        if trans_a:
            blocks = blocks.transpose(-1, -2)
        blocks = blocks * valid.view(-1, 1, 1).to(blocks.dtype)
        # [(Z,) nr, B(out row), kc*B]: columns slot-major, then in-block column.
        w = blocks.reshape(*blocks.shape[:-3], nr, kc, bs, bs).transpose(-3, -2).reshape(
            *blocks.shape[:-3], nr, bs, kc * bs)
        if a_data.dim() > 3:  # per-batch blocks: flatten their leading dims like b's
            w = w.reshape(z, nr, bs, kc * bs)
        xg = xb.index_select(1, g_idx.view(-1)).view(z, nr, kc * bs, n)
        part = torch.matmul(w, xg)  # [Z, nr, B, N]
        if nr == m // bs:  # one group holding every row: its order is the only copy needed
            out = part if bool((rows == torch.arange(nr, device=dev)).all()) else out.index_copy_(1, rows, part)
        else:
            out.index_copy_(1, rows, part)
    return out.view(*lead, m, n)


def dds(a: torch.Tensor, b_data: torch.Tensor, layout: BlockLayout, trans_a: bool = False,
        trans_b: bool = False) -> torch.Tensor:
    """``op(a) @ op(S)`` -> ``[..., M, N]``, computed as ``(op(S)^T @ op(a)^T)^T`` by :func:`dsd`."""
    ct = dsd(b_data, layout, a, trans_a=not trans_b, trans_b=not trans_a)
    return ct.transpose(-1, -2).contiguous()


def sdd(a: torch.Tensor, b: torch.Tensor, layout: BlockLayout, trans_a: bool = False,
        trans_b: bool = False) -> torch.Tensor:
    """Kept blocks of ``op(a) @ op(b)`` -> ``[..., nnz, B, B]`` (pure torch)."""
    bs = layout.block
    m, n = layout.shape
    lead = tuple(a.shape[:-2])
    opa = a.transpose(-1, -2) if trans_a else a
    k = opa.shape[-1]
    z = math.prod(lead)
    a3 = opa.reshape(z, m, k).contiguous()                                   # [Z, M, K]
    bt3 = (b if trans_b else b.transpose(-1, -2)).reshape(z, n, k).contiguous()  # [Z, N, K]
    z = a3.shape[0]
    out = a.new_zeros(z, layout.nnz, bs, bs)
    if layout.nnz == 0 or z == 0 or k == 0:
        return out.view(*lead, layout.nnz, bs, bs)
    dev = a.device
    ab = a3.view(z, m // bs, bs, k)
    bb = bt3.view(z, n // bs, bs, k)
    for rows, g_idx, g_dptr, valid in _plan(layout.crow, layout.col, None):
        rows, g_idx, g_dptr, valid = (t.to(dev) for t in (rows, g_idx, g_dptr, valid))
        nr, kc = g_idx.shape
        ar = ab.index_select(1, rows)                                             # [Z, nr, B, K]
        bg = bb.index_select(1, g_idx.view(-1)).view(z, nr, kc * bs, k)           # [Z, nr, kc*B, K]
        part = torch.matmul(ar, bg.transpose(-1, -2))                             # [Z, nr, B, kc*B]
        part = part.view(z, nr, bs, kc, bs).transpose(2, 3).reshape(z, nr * kc, bs, bs)
        keep = valid.view(-1).nonzero().squeeze(1)
        out.index_copy_(1, g_dptr.view(-1)[keep], part.index_select(1, keep))
    return out.view(*lead, layout.nnz, bs, bs)
