"""Mask one weight to N:M (or transposable N:M), chunk by chunk, and count what the mask keeps.

Masks come from the pattern objects of :mod:`sparse.pruning.patterns`. Existing zeros have |w| = 0,
so the magnitude masks already prefer the non-zeros: the mask keeps as much of the existing magnitude as the pattern allows. Pruned entries
become exactly ``+0`` in the weight's own dtype and kept entries keep their bits.

Rows are processed in blocks (a multiple of ``m`` rows for transposable masks, whose ``m x m``
tiles are aligned to row 0) so temporaries stay small and cache-resident; N:M groups never cross
rows, so the result equals masking the whole tensor at once.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch

from ..pruning.patterns import NMPattern, TransposableNMPattern, as_2d

CHUNK_ELEMS = 1 << 22  # elements per block: 16 MB of fp32; smaller blocks pay per-op thread overhead


@dataclass
class PruneStats:
    """Counts for one tensor; magnitudes are sums of |w| (at least fp32 per block, float64 across blocks)."""
    numel: int = 0
    nnz_before: int = 0
    nnz_after: int = 0
    kept_nonzero: int = 0
    abs_before: float = 0.0
    abs_kept: float = 0.0

    @property
    def newly_zeroed(self) -> int:
        return self.nnz_before - self.kept_nonzero


class BlockBuffer:
    """One reusable output buffer for pruned blocks, shared by every tensor of a conversion.

    Fresh pages are expensive on VMs that hand freed memory back to the host, and per-tensor
    buffers fragment the heap (resident memory then grows with the checkpoint); one buffer grown
    to the largest block avoids both.
    """

    def __init__(self):
        self._raw = torch.empty(0, dtype=torch.uint8)

    def get(self, shape: tuple[int, int], dtype: torch.dtype) -> torch.Tensor:
        nbytes = shape[0] * shape[1] * dtype.itemsize
        if self._raw.numel() < nbytes:
            self._raw = torch.empty(nbytes, dtype=torch.uint8)
        return self._raw[:nbytes].view(dtype).view(shape)


def block_rows(rows: int, cols: int, pattern: NMPattern | TransposableNMPattern) -> int:
    """Rows per block: transposable tiles are m x m and aligned to row 0, so a multiple of m."""
    step = pattern.m if pattern.transposable else 1
    # Transposable masks score every tile against all valid tile patterns (90 for 2:4): their
    # temporaries are several times the block, so their blocks are smaller.
    elems = CHUNK_ELEMS // 4 if pattern.transposable else CHUNK_ELEMS
    return max(step, elems // max(cols, 1) // step * step)


def prune_blocks(weight: torch.Tensor, pattern: NMPattern | TransposableNMPattern, stats: PruneStats,
                 name: str = "weight", *,
                 buffer: BlockBuffer | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(pruned_block, mask_block)`` over row blocks of ``weight`` flattened to 2-D.

    ``pruned_block`` has the weight's dtype (pruned entries exactly +0, kept ones bit-identical);
    blocks concatenated in order are the row-major bytes of the pruned tensor. ``stats`` is
    updated in place. NaN/Inf raise ``ValueError`` naming ``name``. With ``buffer`` every pruned
    block lives in that buffer and the next block overwrites it (consume it before advancing).
    """
    w2d = as_2d(weight)
    rows, cols = w2d.shape
    step = block_rows(rows, cols, pattern)
    zero = torch.zeros((), dtype=w2d.dtype)
    # fp16/bf16 sums overflow or lose the small terms, and vector_norm refuses to narrow fp64:
    # accumulate in fp32, or in the weight's own dtype when that is wider.
    acc = torch.promote_types(w2d.dtype, torch.float32)
    stats.numel += w2d.numel()
    for lo in range(0, rows, step):
        blk = w2d[lo:lo + step]
        try:
            mask = pattern.mask(blk)
        except ValueError as exc:
            raise ValueError(f"{name}: {exc}") from None
        if buffer is None:
            pruned = torch.where(mask, blk, zero)
        else:
            pruned = torch.where(mask, blk, zero, out=buffer.get(tuple(blk.shape), blk.dtype))
        # One pass each, no temporaries: L1 norms give the magnitudes (partial sums of at most
        # CHUNK_ELEMS terms in at least fp32, added up in float64 here), count_nonzero the densities.
        stats.nnz_before += int(torch.count_nonzero(blk))
        kept = int(torch.count_nonzero(pruned))
        stats.nnz_after += kept
        stats.kept_nonzero += kept
        stats.abs_before += float(torch.linalg.vector_norm(blk, ord=1, dtype=acc))
        stats.abs_kept += float(torch.linalg.vector_norm(pruned, ord=1, dtype=acc))
        yield pruned, mask


def prune_tensor(weight: torch.Tensor, pattern: NMPattern | TransposableNMPattern,
                 name: str = "weight") -> tuple[torch.Tensor, torch.Tensor, PruneStats]:
    """Whole-tensor convenience: ``(pruned [same shape/dtype], mask [rows, cols] bool, stats)``."""
    stats = PruneStats()
    parts = list(prune_blocks(weight, pattern, stats, name))
    pruned = torch.cat([p for p, _ in parts]).reshape(weight.shape)
    mask = torch.cat([k for _, k in parts])
    return pruned, mask, stats
