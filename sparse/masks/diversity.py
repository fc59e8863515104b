"""Mask diversity: the exact number of valid masks of one m x m tile, counted (no closed forms)."""
from __future__ import annotations

import functools
import math

from ._checks import check_flag, check_nm

# Counting visits about C(m + k, k) column-sum histograms (k = min(n, m - n)), each with many row
# choices: 8:16 (7.4e5 states) takes ~1 min here; 16:32 (2e12) would never end. Larger counts are
# refused rather than left to run for hours.
MAX_COUNT_STATES = 1_000_000


def mask_diversity(n: int, m: int, transposable: bool = False) -> int:
    """Number of valid masks of one ``m x m`` tile, as an exact Python ``int``.

    1-D N:M: each of the m rows picks n of m independently, ``C(m, n) ** m``.
    Transposable: the number of m x m 0/1 matrices with every row and column sum equal to n,
    counted by dynamic programming over the histogram of column sums (e.g. 90 for 2:4).
    Counting is instant up to m = 12 and takes ~20 s to a minute for 8:16 (cached afterwards); it grows
    exponentially beyond m = 16, and counts of more than ``MAX_COUNT_STATES`` states (e.g. 16:32, 7:24)
    raise ``ValueError`` instead of running for hours.
    """
    n, m = check_nm(n, m)
    transposable = check_flag(transposable, "transposable")
    if not transposable:
        return math.comb(m, n) ** m
    # Complementing a tile maps row/column sums n to m - n, so count the cheaper side.
    k = min(n, m - n)
    states = math.comb(m + k, k)
    if states > MAX_COUNT_STATES:
        raise ValueError(f"m: counting transposable masks of {n}:{m} needs ~{states:.1e} states, more than "
                         f"{MAX_COUNT_STATES:.0e} (the count grows exponentially with min(n, m - n)); "
                         f"counts are exact up to 8:16 and for small n (e.g. 1:32, 5:32)")
    return _count_transposable(k, m)


@functools.lru_cache(maxsize=None)
def _count_transposable(n: int, m: int) -> int:
    # State: hist[k] = number of columns that already hold k ones (k = 0..n). Rows are filled one at a
    # time; a row puts its n ones in n distinct columns that are not yet full.
    @functools.lru_cache(maxsize=None)
    def count(rows_left: int, hist: tuple[int, ...]) -> int:
        if rows_left == 0:
            return 1 if hist[n] == m else 0
        total = 0
        for choice in _choices(hist, n):
            ways = 1
            new = list(hist)
            for k, c in enumerate(choice):
                if c:
                    ways *= math.comb(hist[k], c)
                    new[k] -= c
                    new[k + 1] += c
            total += ways * count(rows_left - 1, tuple(new))
        return total

    start = (m,) + (0,) * n
    return count(m, start)


def _choices(hist: tuple[int, ...], n: int):
    """All ways to take n columns from the classes 0..n-1 (class n is full)."""
    out = []

    def rec(k, left, acc):
        if k == n:
            if left == 0:
                out.append(tuple(acc) + (0,))
            return
        for c in range(min(hist[k], left) + 1):
            rec(k + 1, left - c, acc + [c])

    rec(0, n, [])
    return out
