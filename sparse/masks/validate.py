"""Validity checks for N:M and transposable N:M masks."""
from __future__ import annotations

import torch

from ._checks import check_dim, check_mask, check_nm


def _as_bool(mask: torch.Tensor) -> torch.Tensor:
    return mask if mask.dtype == torch.bool else mask != 0


def is_nm(mask: torch.Tensor, n: int, m: int, dim: int = 1) -> bool:
    """True if every group of ``m`` consecutive entries along ``dim`` has exactly ``n`` non-zeros.

    ``mask``: 2-D bool (or numeric, non-zero = kept) tensor whose size along ``dim`` divides by ``m``.
    """
    check_mask(mask)
    n, m = check_nm(n, m)
    dim = check_dim(dim)
    mk = _as_bool(mask)
    if mk.shape[dim] % m:
        return False
    g = (mk if dim == 1 else mk.t()).reshape(-1, m).sum(1)
    return bool((g == n).all())


def tile_counts(mask: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-tile row and column counts: two int tensors ``[tiles, m]`` (sides multiples of m, checked by
    the callers)."""
    r, c = mask.shape
    t = _as_bool(mask).reshape(r // m, m, c // m, m).permute(0, 2, 1, 3).reshape(-1, m, m).to(torch.int32)
    return t.sum(2), t.sum(1)


def is_transposable(mask: torch.Tensor, n: int, m: int) -> bool:
    """True if every aligned ``m x m`` tile keeps exactly ``n`` per row and per column.

    Then both the mask and its transpose are N:M along dim 1.
    """
    check_mask(mask)
    n, m = check_nm(n, m)
    if mask.shape[0] % m or mask.shape[1] % m:
        return False
    rows, cols = tile_counts(mask, m)
    return bool((rows == n).all() and (cols == n).all())


def complete_tiles(mask: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Bool ``[tiles]``: which aligned tiles have exactly ``n`` per row and column.

    ``mask``: 2-D bool (or numeric, non-zero = kept) tensor with both sides multiples of ``m``; tiles in
    row-major tile order (tile (i, j) at index ``i * (cols / m) + j``).
    """
    check_mask(mask)
    n, m = check_nm(n, m)
    if mask.shape[0] % m or mask.shape[1] % m:
        raise ValueError(f"mask: expected both sides multiples of m={m}, got shape {tuple(mask.shape)}")
    rows, cols = tile_counts(mask, m)
    return (rows == n).all(1) & (cols == n).all(1)
