"""Wanda (Sun et al., 2023): prune by ``|W_ij| * ||X_j||_2``, no weight update.

``||X_j||_2`` is the norm of input feature ``j`` over the calibration tokens, read off the diagonal
of ``H = X^T X`` (the same Gram matrix SparseGPT uses). The comparison group follows the pattern:
each group of m columns per row (1-D N:M), each ``m x m`` tile by the exact transposable solver
(transposable N:M), each output row (unstructured, as in the paper). Source zeros are pruned
before any non-zero of their group (see :mod:`sparse.convert.sparsegpt`); since nothing is
updated, a source zero the pattern forces to keep stays an exact zero.
"""
from __future__ import annotations

import torch

from ..pruning.patterns import UnstructuredPattern
from .sparsegpt import check_gram, check_pattern, priority_key, select_group


def wanda_scores(weight: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """``|W| * sqrt(diag H)``: ``[out, in]`` fp32 from weight ``[out, in]`` and ``H`` ``[in, in]``."""
    return weight.detach().float().abs() * h.diagonal().double().clamp_min(0).sqrt().float()[None, :]


@torch.no_grad()
def wanda_prune(weight: torch.Tensor, h: torch.Tensor, pattern, *, src_nonzero: torch.Tensor | None = None,
                name: str = "weight") -> tuple[torch.Tensor, torch.Tensor]:
    """``(pruned weight [out, in] in weight's dtype, kept mask [out, in] bool)``; kept entries keep
    their bits. ``h``: ``[in, in]`` ``X^T X`` (only its diagonal is used)."""
    check_pattern(pattern)
    check_gram(weight, h, name)
    why = pattern.fits(tuple(weight.shape))
    if why is not None:
        raise ValueError(f"{name}: {why}")
    score = wanda_scores(weight, h)
    if isinstance(pattern, UnstructuredPattern):
        key = priority_key(score, src_nonzero, 2.0)
        rows, cols = key.shape
        drop = int(pattern.sparsity * cols + 0.5)
        keep = torch.ones(rows, cols, dtype=torch.bool)
        if drop > 0:
            order = torch.sort(key, dim=1, stable=True).indices[:, :drop]
            keep.scatter_(1, order, False)
    else:
        # Selections are per group / tile, and one positive scale keeps each one's choice.
        keep = select_group(priority_key(score, src_nonzero, float(pattern.m ** 2 + 1)), pattern)
    return torch.where(keep, weight.detach(), torch.zeros((), dtype=weight.dtype)), keep
