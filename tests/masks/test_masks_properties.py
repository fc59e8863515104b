"""Property-based invariants across shapes, patterns, dtypes, ties and zeros."""
import pytest
import torch

hyp = pytest.importorskip("hypothesis")
from hypothesis import given, strategies as st  # noqa: E402

from sparse.masks import is_nm, is_transposable, nm_mask, transposable_mask  # noqa: E402

PATTERNS = [(1, 2), (2, 4), (1, 4), (3, 4), (2, 8), (4, 8)]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@st.composite
def weights(draw, tiles_both_ways: bool):
    n, m = draw(st.sampled_from(PATTERNS))
    r = draw(st.integers(1, 3)) * (m if tiles_both_ways else 1)
    c = draw(st.integers(1, 3)) * m
    dtype = draw(st.sampled_from(DTYPES))
    kind = draw(st.sampled_from(["normal", "ties", "zeros", "sparse"]))
    seed = draw(st.integers(0, 2 ** 16))
    g = torch.Generator().manual_seed(seed)
    if kind == "normal":
        w = torch.randn(r, c, generator=g)
    elif kind == "ties":
        w = torch.randint(-2, 3, (r, c), generator=g).float()
    elif kind == "zeros":
        w = torch.zeros(r, c)
    else:
        w = torch.randn(r, c, generator=g) * (torch.rand(r, c, generator=g) < 0.3)
    return n, m, w.to(dtype)


@given(weights(tiles_both_ways=False))
def test_nm_invariants(args):
    n, m, w = args
    mask = nm_mask(w, n, m)
    assert mask.dtype == torch.bool and mask.shape == w.shape
    assert is_nm(mask, n, m)
    assert torch.equal(mask, nm_mask(w, n, m))  # deterministic
    g, gm = w.float().abs().reshape(-1, m), mask.reshape(-1, m)
    assert bool((torch.where(gm, g, torch.inf).amin(1) >= torch.where(gm, -torch.inf, g).amax(1)).all())


@given(weights(tiles_both_ways=True), st.sampled_from(["exact", "approx", "greedy"]))
def test_transposable_invariants(args, method):
    n, m, w = args
    mask = transposable_mask(w, n, m, method)
    assert mask.dtype == torch.bool and mask.shape == w.shape
    assert is_transposable(mask, n, m)
    assert is_nm(mask, n, m) and is_nm(mask, n, m, dim=0)
    assert torch.equal(mask, transposable_mask(w, n, m, method))
    # never worse than... exact is the optimum
    s = w.float().abs().double()
    best = float((s * transposable_mask(w, n, m, "exact")).sum())
    assert float((s * mask).sum()) <= best * (1 + 1e-6) + 1e-9
