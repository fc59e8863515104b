"""Exact transposable masks by enumerating every valid tile pattern (small m only).

For 2:4 there are 90 valid 4x4 patterns: the best one per tile is ``argmax(tiles @ patterns.T)``,
a single matmul over all tiles.
"""
from __future__ import annotations

import functools
import itertools

import torch

from .diversity import mask_diversity

MAX_PATTERNS = 4096  # enumeration is used when a tile has at most this many valid patterns


def enumerable(n: int, m: int) -> bool:
    return m <= 6 and mask_diversity(n, m, transposable=True) <= MAX_PATTERNS


@functools.lru_cache(maxsize=None)
def patterns(n: int, m: int) -> torch.Tensor:
    """All valid m x m patterns, ``[P, m*m]`` float32 0/1, in lexicographic order (deterministic ties)."""
    rows = [tuple(1 if j in c else 0 for j in range(m)) for c in itertools.combinations(range(m), n)]
    rows.sort(reverse=True)
    out = []

    def rec(prefix, colsum):
        k = len(prefix)
        if k == m:
            out.append([v for r in prefix for v in r])
            return
        left = m - k - 1  # rows still to place after this one
        for r in rows:
            new = [a + b for a, b in zip(colsum, r)]
            # every column must still be able to reach exactly n
            if all(v <= n and v + left >= n for v in new):
                rec(prefix + [r], new)

    rec([], [0] * m)
    return torch.tensor(out, dtype=torch.float32)


def enum_tiles(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Best valid pattern per tile. ``scores``: ``[T, m, m]`` float -> bool ``[T, m, m]``."""
    pats = patterns(n, m).to(device=scores.device, dtype=scores.dtype)
    flat = scores.reshape(-1, m * m)
    best = torch.empty(flat.shape[0], dtype=torch.long, device=scores.device)
    chunk = 1 << 18  # bound the [chunk, P] score buffer
    for s in range(0, flat.shape[0], chunk):
        best[s:s + chunk] = (flat[s:s + chunk] @ pats.T).argmax(1)
    return pats.bool()[best].reshape(-1, m, m)
