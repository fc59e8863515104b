"""Block masks: drop whole ``rows x cols`` blocks of a 2-D weight by L1 norm."""
from __future__ import annotations

import math

import torch


def block_mask(weight: torch.Tensor, rows: int, cols: int, sparsity: float) -> torch.Tensor:
    """Keep the ``round((1 - sparsity) * blocks)`` blocks of largest L1 norm.

    Args:
        weight: ``[out, in]`` float tensor with ``out % rows == 0`` and ``in % cols == 0``.
        sparsity: fraction of blocks to drop, in ``[0, 1)``.

    Returns:
        ``torch.bool`` ``[out, in]`` on ``weight``'s device; ties broken by block index (stable sort).
    """
    out_f, in_f = weight.shape
    if out_f % rows or in_f % cols:
        raise ValueError(f"weight: expected a shape divisible by the block {rows}x{cols}, got {tuple(weight.shape)}")
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity: expected a number in [0, 1), got {sparsity}")
    norms = weight.detach().float().abs().reshape(out_f // rows, rows, in_f // cols, cols).sum(dim=(1, 3))
    n_blocks = norms.numel()
    keep = n_blocks - int(math.floor(sparsity * n_blocks + 0.5))
    keep = max(keep, 1)
    order = torch.sort(norms.flatten(), descending=True, stable=True).indices
    flat = torch.zeros(n_blocks, dtype=torch.bool, device=weight.device)
    flat[order[:keep]] = True
    bm = flat.reshape(norms.shape)
    return bm.repeat_interleave(rows, 0).repeat_interleave(cols, 1)
