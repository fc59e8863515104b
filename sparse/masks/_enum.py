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
def pattern_table(n: int, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Valid patterns as row-combination indices.

    Returns ``combos`` int32 ``[C(m,n), n]`` (column indices of each row combination, in
    lexicographic order) and ``rows`` int32 ``[P, m]`` (the combination each row of a pattern uses,
    patterns in lexicographic order, which fixes the tie-breaking: the first best pattern wins).
    """
    combos = list(itertools.combinations(range(m), n))
    out = []

    def rec(prefix, colsum):
        k = len(prefix)
        if k == m:
            out.append(list(prefix))
            return
        left = m - k - 1  # rows still to place after this one
        for ci, c in enumerate(combos):
            new = list(colsum)
            for j in c:
                new[j] += 1
            # every column must still be able to reach exactly n
            if all(v <= n and v + left >= n for v in new):
                rec(prefix + [ci], new)

    rec([], [0] * m)
    return torch.tensor(combos, dtype=torch.int32), torch.tensor(out, dtype=torch.int32)


@functools.lru_cache(maxsize=None)
def patterns(n: int, m: int) -> torch.Tensor:
    """All valid m x m patterns, ``[P, m*m]`` float32 0/1, in the order of :func:`pattern_table`."""
    combos, rows = pattern_table(n, m)
    onehot = torch.zeros(combos.shape[0], m)
    onehot.scatter_(1, combos.long(), 1.0)
    return onehot[rows.long()].reshape(rows.shape[0], m * m)


def enum_tiles(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Best valid pattern per tile. ``scores``: ``[T, m, m]`` float -> bool ``[T, m, m]``.

    Sums in the csrc kernels' order (each row's combination sums, then a pattern's rows in order) and
    in the scores' precision, first best pattern on ties, so both backends pick the same pattern even
    where two patterns' sums differ by one rounding.
    """
    combos, rows = pattern_table(n, m)
    combos, rows = combos.long().to(scores.device), rows.long().to(scores.device)
    pats = patterns(n, m).to(device=scores.device)
    t = scores.shape[0]
    best = torch.empty(t, dtype=torch.long, device=scores.device)
    chunk = max(1, (1 << 22) // rows.shape[0])  # bound the [chunk, P] score buffer
    for s0 in range(0, t, chunk):
        sc = scores[s0:s0 + chunk]
        g = sc[:, :, combos]                     # [c, m, C, n]: |w| of each row's combinations
        rs = g[..., 0]
        for q in range(1, n):
            rs = rs + g[..., q]
        acc = rs[:, 0, rows[:, 0]]               # [c, P]
        for i in range(1, m):
            acc = acc + rs[:, i, rows[:, i]]
        best[s0:s0 + chunk] = acc.argmax(1)
    return pats.bool()[best].reshape(-1, m, m)
