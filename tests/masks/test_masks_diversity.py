import itertools
import math

import pytest

from sparse.masks import mask_diversity


def brute_force(n, m):
    rows = [r for r in itertools.product((0, 1), repeat=m) if sum(r) == n]
    return sum(1 for t in itertools.product(rows, repeat=m) if all(sum(c) == n for c in zip(*t)))


@pytest.mark.parametrize("n,m", [(1, 2), (1, 3), (2, 3), (1, 4), (2, 4), (3, 4), (2, 5)])
def test_transposable_diversity_matches_brute_force(n, m):
    assert mask_diversity(n, m, transposable=True) == brute_force(n, m)


def test_known_values():
    assert mask_diversity(2, 4, transposable=True) == 90
    assert mask_diversity(4, 8, transposable=True) == 116963796250
    assert mask_diversity(2, 4) == 6 ** 4
    assert mask_diversity(4, 8) == math.comb(8, 4) ** 8
    assert isinstance(mask_diversity(4, 8, transposable=True), int)


def test_symmetric_in_n():
    assert mask_diversity(3, 7, transposable=True) == mask_diversity(4, 7, transposable=True)
