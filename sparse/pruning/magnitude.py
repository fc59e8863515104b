"""Magnitude masks for every recipe pattern, built on :mod:`sparse.masks`.

Weights of any rank are viewed as 2-D ``[out, in * ...]`` (conv kernels flattened), N:M groups run
along the flattened input dimension, and the mask is returned in the weight's own shape.
"""
from __future__ import annotations

import math

import torch

from .. import masks as M
from ..recipe import Pattern
from .block import block_mask


def as_2d(weight: torch.Tensor) -> torch.Tensor:
    """``[out, in, *k]`` -> ``[out, in * prod(k)]`` view (2-D weights unchanged)."""
    return weight.reshape(weight.shape[0], -1)


def fits(pattern: Pattern, shape: torch.Size | tuple[int, ...]) -> str | None:
    """``None`` when a weight of ``shape`` fits ``pattern``, else why not (for errors and reports)."""
    rows = shape[0]
    cols = math.prod(shape[1:])
    if pattern.kind == "nm":
        if cols % pattern.m:
            return f"in_features {cols} is not divisible by m={pattern.m}"
        if pattern.transposable and rows % pattern.m:
            return f"out_features {rows} is not divisible by m={pattern.m} (transposable tiles are m x m)"
    elif pattern.kind == "block":
        r, c = pattern.block
        if rows % r or cols % c:
            return f"shape [{rows}, {cols}] is not divisible by the block {r}x{c}"
    return None


def unstructured_mask(weight2d: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep the ``numel - round(sparsity * numel)`` largest ``|w|`` (ties: lower flat index first)."""
    flat = weight2d.detach().float().abs().flatten()
    drop = int(math.floor(sparsity * flat.numel() + 0.5))
    mask = torch.ones(flat.numel(), dtype=torch.bool, device=weight2d.device)
    if drop > 0:
        order = torch.sort(flat, stable=True).indices  # ascending: the first ``drop`` are pruned
        mask[order[:drop]] = False
    return mask.reshape(weight2d.shape)


def pattern_mask(weight: torch.Tensor, pattern: Pattern, sparsity: float | None = None) -> torch.Tensor:
    """Magnitude mask of ``weight`` (any float dtype, rank >= 2) for ``pattern``.

    Args:
        sparsity: overrides the pattern's sparsity for ``unstructured``/``block`` (gradual schedules).

    Returns:
        ``torch.bool`` tensor of ``weight.shape`` on ``weight``'s device.
    """
    w = as_2d(weight.detach())
    if pattern.kind == "nm":
        if pattern.transposable:
            mask = M.transposable_mask(w, pattern.n, pattern.m, method=pattern.solver)
        else:
            mask = M.nm_mask(w, pattern.n, pattern.m, dim=1)
    else:
        s = pattern.sparsity if sparsity is None else sparsity
        if pattern.kind == "unstructured":
            mask = unstructured_mask(w, s)
        else:
            mask = block_mask(w, pattern.block[0], pattern.block[1], s)
    return mask.reshape(weight.shape)


def mask_valid(mask: torch.Tensor, pattern: Pattern, sparsity: float | None = None) -> bool:
    """Whether ``mask`` satisfies ``pattern`` (N:M / transposable structure, or the sparsity)."""
    m2 = as_2d(mask)
    if pattern.kind == "nm":
        if pattern.transposable:
            return bool(M.is_transposable(m2, pattern.n, pattern.m))
        return bool(M.is_nm(m2, pattern.n, pattern.m, dim=1))
    s = pattern.sparsity if sparsity is None else sparsity
    if pattern.kind == "block":
        r, c = pattern.block
        blocks = m2.reshape(m2.shape[0] // r, r, m2.shape[1] // c, c)
        uniform = bool((blocks.all(dim=(1, 3)) | ~blocks.any(dim=(1, 3))).all())
        if not uniform:
            return False
        total = blocks.shape[0] * blocks.shape[2]
        dropped = total - int(blocks.all(dim=(1, 3)).sum())
        return abs(dropped - math.floor(s * total + 0.5)) <= 1
    dropped = int((~m2).sum())
    return dropped >= math.floor(s * m2.numel() + 0.5)
