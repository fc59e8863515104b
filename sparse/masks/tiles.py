"""Aligned m x m tiles of a 2-D tensor, and back."""
from __future__ import annotations

import torch


def to_tiles(x: torch.Tensor, m: int) -> torch.Tensor:
    """``[R, C]`` (R, C multiples of m) -> ``[R/m * C/m, m, m]``, tile (i, j) at index i*(C/m)+j."""
    r, c = x.shape
    return x.reshape(r // m, m, c // m, m).permute(0, 2, 1, 3).reshape(-1, m, m)


def from_tiles(t: torch.Tensor, shape: tuple[int, int], m: int) -> torch.Tensor:
    """Inverse of :func:`to_tiles`."""
    r, c = shape
    return t.reshape(r // m, c // m, m, m).permute(0, 2, 1, 3).reshape(r, c)
