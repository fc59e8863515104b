"""Fast CPU path of the block-sparse matmuls: batched gather + one GEMM per call (pure torch).

The sparse operand's block rows are cut into *chunks* of ``kc`` blocks (the last chunk of a row padded
with zero blocks). One ``index_select`` gathers, for every chunk, the ``kc`` dense row-blocks it
multiplies; one batched matmul (oneDNN/AMX for bf16) computes all chunks; an ``index_add_`` (or
``index_copy_`` when every row is a single chunk) sums the chunks of each row. ``kc`` trades padding
work against the number of partial sums and is chosen per layout by a small cost model.

Few large ops on purpose: on a shared 2-core machine every parallel region can cost a scheduler slice,
so a loop over block rows (hundreds of small GEMMs) is far slower than dense.

Same signatures and semantics as :mod:`triton_kernels.block_sparse` (``sdd``, ``dsd``, ``dds``).
"""
from __future__ import annotations

import math

import torch

from triton_kernels.layout import BlockLayout


def _choose_kc(counts: torch.Tensor) -> int:
    """Blocks per chunk minimising padded block products plus per-chunk partial-sum traffic."""
    nz = counts[counts > 0]
    if nz.numel() == 0:
        return 1
    kmax = int(nz.max())
    best, best_cost = kmax, None
    for kc in sorted({kmax, *range(1, min(kmax, 8) + 1), -(-kmax // 2)}):
        chunks = (nz + kc - 1) // kc
        nch = int(chunks.sum())
        # Padded slot = one gathered block + its GEMM share; a multi-chunk row adds an index_add pass.
        cost = nch * kc + nch * (2 if kc < kmax else 1)
        if best_cost is None or cost < best_cost:
            best, best_cost = kc, cost
    return best


def _plan(seg: torch.Tensor, idx: torch.Tensor, dptr: torch.Tensor | None):
    """Chunks of the sparse rows described by ``seg`` (pointers), ``idx`` and ``dptr`` (data index).

    Returns ``(kc, ch_row [nch], ch_idx [nch, kc], ch_dptr [nch, kc], valid [nch, kc], single)`` where
    ``single`` says every non-empty row is exactly one chunk (all int64 on CPU).
    """
    seg = seg.to("cpu", torch.int64)
    idx = idx.to("cpu", torch.int64)
    counts = seg[1:] - seg[:-1]
    kc = _choose_kc(counts)
    nchunks = (counts + kc - 1) // kc
    nch = int(nchunks.sum())
    rows = torch.arange(counts.numel())
    ch_row = torch.repeat_interleave(rows, nchunks)
    start_chunk = torch.cumsum(nchunks, 0) - nchunks
    j = torch.arange(nch) - torch.repeat_interleave(start_chunk, nchunks)
    pos = (seg[:-1][ch_row] + j * kc)[:, None] + torch.arange(kc)
    valid = pos < seg[1:][ch_row][:, None]
    pos = torch.where(valid, pos, torch.zeros_like(pos))
    ch_idx = torch.where(valid, idx[pos], torch.zeros_like(pos))
    ch_dptr = pos if dptr is None else dptr.to("cpu", torch.int64)[pos]
    return kc, ch_row, ch_idx, ch_dptr, valid, bool((nchunks <= 1).all())


def _row_side(layout: BlockLayout, trans: bool):
    """Row-major walk over op(S): (seg, idx, dptr) for S itself, the transpose metadata for S^T."""
    if trans:
        return layout.ccol, layout.row_t, layout.perm_t
    return layout.crow, layout.col, None


def dsd(a_data: torch.Tensor, layout: BlockLayout, b: torch.Tensor, trans_a: bool = False,
        trans_b: bool = False) -> torch.Tensor:
    """``op(S) @ op(b)`` -> ``[..., M, N]`` (see :func:`triton_kernels.dsd`)."""
    bs = layout.block
    m, k = layout.shape[::-1] if trans_a else layout.shape
    lead = tuple(b.shape[:-2])
    opb = b.transpose(-1, -2) if trans_b else b
    n = opb.shape[-1]
    b3 = opb.reshape(math.prod(lead), k, n).contiguous()
    z = b3.shape[0]
    if layout.nnz == 0 or z * m * n == 0:
        return b.new_zeros(*lead, m, n)
    kc, ch_row, ch_idx, ch_dptr, valid, single = _plan(*_row_side(layout, trans_a))
    dev = b.device
    ch_row, ch_idx, ch_dptr, valid = (t.to(dev) for t in (ch_row, ch_idx, ch_dptr, valid))
    nch = ch_row.numel()
    blocks = a_data[..., ch_dptr.view(-1), :, :]  # [(Z,) nch*kc, B, B]
    if trans_a:
        blocks = blocks.transpose(-1, -2)
    blocks = blocks * valid.view(-1, 1, 1).to(blocks.dtype)
    # [(Z,) nch, B(out row), kc*B]: chunk row r_local, columns slot-major then in-block column.
    w = blocks.reshape(*blocks.shape[:-3], nch, kc, bs, bs).transpose(-3, -2).reshape(
        *blocks.shape[:-3], nch, bs, kc * bs)
    if a_data.dim() > 3:  # per-batch blocks: flatten their leading dims like b's
        w = w.reshape(z, nch, bs, kc * bs)
    xg = b3.view(z, k // bs, bs, n).index_select(1, ch_idx.view(-1)).view(z, nch, kc * bs, n)
    part = torch.matmul(w, xg)  # [Z, nch, B, N]
    out = b3.new_zeros(z, m // bs, bs, n)
    if single:
        out.index_copy_(1, ch_row, part)
    else:
        out.index_add_(1, ch_row, part)
    return out.view(*lead, m, n)


def dds(a: torch.Tensor, b_data: torch.Tensor, layout: BlockLayout, trans_a: bool = False,
        trans_b: bool = False) -> torch.Tensor:
    """``op(a) @ op(S)`` -> ``[..., M, N]``, computed as ``(op(S)^T @ op(a)^T)^T`` by :func:`dsd`."""
    ct = dsd(b_data, layout, a, trans_a=not trans_b, trans_b=not trans_a)
    return ct.transpose(-1, -2).contiguous()


def sdd(a: torch.Tensor, b: torch.Tensor, layout: BlockLayout, trans_a: bool = False,
        trans_b: bool = False) -> torch.Tensor:
    """Kept blocks of ``op(a) @ op(b)`` -> ``[..., nnz, B, B]`` (see :func:`triton_kernels.sdd`)."""
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
    kc, ch_row, ch_idx, ch_dptr, valid, _ = _plan(layout.crow, layout.col, None)
    dev = a.device
    ch_row, ch_idx, ch_dptr, valid = (t.to(dev) for t in (ch_row, ch_idx, ch_dptr, valid))
    nch = ch_row.numel()
    ar = a3.view(z, m // bs, bs, k).index_select(1, ch_row)                      # [Z, nch, B, K]
    bg = bt3.view(z, n // bs, bs, k).index_select(1, ch_idx.view(-1)).view(z, nch, kc * bs, k)
    part = torch.matmul(ar, bg.transpose(-1, -2))                                # [Z, nch, B, kc*B]
    part = part.view(z, nch, bs, kc, bs).transpose(2, 3).reshape(z, nch * kc, bs, bs)
    keep = valid.view(-1).nonzero().squeeze(1)
    out.index_copy_(1, ch_dptr.view(-1)[keep], part.index_select(1, keep))
    return out.view(*lead, layout.nnz, bs, bs)
