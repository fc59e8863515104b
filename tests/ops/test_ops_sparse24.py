"""2:4 kernels (csrc/include/sparse/sparse24_tile.h through the CPU launcher): CUTLASS layout against torch's own
converter, round trips, the fused transposable compression against the exact solver, MVUE statistics, bad input."""
from __future__ import annotations


import pytest
import torch
from torch.sparse._semi_structured_conversions import (sparse_semi_structured_from_dense_cutlass,
                                                       sparse_semi_structured_to_dense_cutlass)

from sparse.masks import nm_mask, transposable_mask
from sparse.ops import compress_24, decompress_24, mask_24, mvue_12, mvue_24
from sparse.ops import sparse24 as ops24
from sparse.ops.dispatch import use_backend

pytestmark = pytest.mark.skipif(ops24.native_reason() is not None, reason=str(ops24.native_reason()))

DT = [torch.float32, torch.float16, torch.bfloat16]


def rand(r, c, dtype=torch.float32, seed=0):
    return torch.randn(r, c, generator=torch.Generator().manual_seed(seed)).to(dtype)


@pytest.mark.parametrize("dtype", DT)
@pytest.mark.parametrize("shape", [(32, 32), (64, 96), (96, 32)])
def test_round_trip_rows(dtype, shape):
    w = rand(*shape, dtype)
    values, meta = compress_24(w)
    assert values.shape == (shape[0], shape[1] // 2) and values.dtype == dtype
    assert meta.shape == (shape[0], shape[1] // 16) and meta.dtype == torch.int16
    mask = mask_24(w)
    assert torch.equal(mask, nm_mask(w.float(), 2, 4))
    assert torch.equal(decompress_24(values, meta), w * mask)


@pytest.mark.parametrize("dtype", DT)
def test_round_trip_transposable_and_wt(dtype):
    w = rand(64, 96, dtype, seed=1)
    values, meta, values_t, meta_t = compress_24(w, transposable=True)
    mask = mask_24(w, transposable=True)
    wm = w * mask
    assert torch.equal(decompress_24(values, meta), wm)
    assert torch.equal(decompress_24(values_t, meta_t), wm.t())
    # compressed W^T is exactly the row compression of the transposed masked W (no kept zeros here)
    vt2, mt2 = compress_24(wm.t().contiguous())
    assert torch.equal(values_t, vt2) and torch.equal(meta_t, mt2)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("transposable", [False, True])
def test_cutlass_layout_matches_torch_converter(dtype, transposable):
    w = rand(128, 64, dtype, seed=2)
    out = compress_24(w, transposable=transposable)
    wm = w * mask_24(w, transposable)
    ref_v, ref_m = sparse_semi_structured_from_dense_cutlass(wm)
    assert torch.equal(out[0], ref_v) and torch.equal(out[1], ref_m)
    assert torch.equal(sparse_semi_structured_to_dense_cutlass(out[0], out[1]), wm)  # torch's decoder
    if transposable:
        ref_vt, ref_mt = sparse_semi_structured_from_dense_cutlass(wm.t().contiguous())
        assert torch.equal(out[2], ref_vt) and torch.equal(out[3], ref_mt)


def test_decompress_reads_torch_encodings_of_sparser_groups():
    # groups with 0 or 1 non-zeros get torch's special codes (e.g. 0b1110); decoding must still give the dense matrix
    w = rand(32, 32, torch.float16, seed=3)
    w = w * nm_mask(w.float(), 2, 4)
    w[0, :4] = 0
    w[1, 1:4] = 0
    w[2, 0:3] = 0
    v, m = sparse_semi_structured_from_dense_cutlass(w)
    assert torch.equal(decompress_24(v, m), w)


@pytest.mark.parametrize("dtype", DT)
def test_transposable_mask_equals_exact_solver(dtype):
    for seed in range(3):
        w = rand(64, 128, dtype, seed=10 + seed)
        assert torch.equal(mask_24(w, True), transposable_mask(w, 2, 4, method="exact"))
    # ties: small integers (many equal |w| and equal pattern sums); the first best pattern wins in both
    t = torch.randint(-2, 3, (64, 64), generator=torch.Generator().manual_seed(4)).float()
    with use_backend("csrc-cpu"):
        ref = transposable_mask(t, 2, 4, method="exact")
    assert torch.equal(mask_24(t, True), ref)
    assert torch.equal(mask_24(torch.zeros(32, 32), True), transposable_mask(torch.zeros(32, 32), 2, 4, method="exact"))


def test_negative_zero_and_fp16_extremes():
    w = torch.tensor([[-0.0, 0.0, 1.0, -1.0] * 8] * 32)
    v, m = compress_24(w)
    assert torch.equal(decompress_24(v, m), w * mask_24(w))
    big = (rand(32, 32, seed=5) * 3e4).clamp(-65000, 65000).half()
    assert torch.equal(decompress_24(*compress_24(big)), big * mask_24(big))


def test_exact_keeps_at_least_greedy():
    from sparse.bench.sparse24 import greedy_tile_mask_24, kept_fraction

    w = rand(128, 128, seed=6)
    ex, gr = mask_24(w, True), greedy_tile_mask_24(w)
    tiles = lambda m: (w.abs() * m).reshape(32, 4, 32, 4).sum(dim=(1, 3))  # noqa: E731
    complete = gr.reshape(32, 4, 32, 4).sum(dim=(1, 3)) == 8
    # the best complete pattern beats greedy wherever greedy is complete; an incomplete greedy tile (fewer than 2 in
    # some row and column, ~16% of them) can hold more |w| than any complete pattern, but overall exact keeps more
    assert bool((tiles(ex)[complete] >= tiles(gr)[complete] - 1e-5).all())
    assert 0.1 < float((~complete).float().mean()) < 0.25
    assert kept_fraction(w, ex) > kept_fraction(w, gr)


# ------------------------------------------------------------------------------------------------ MVUE
def _p24(a: torch.Tensor) -> torch.Tensor:
    """Independent inclusion probabilities: water-filling min(1, c|a|) with sum 2 (float64)."""
    m = a.abs().double()
    p = torch.zeros_like(m)
    for i in range(m.shape[0]):
        g = m[i]
        if int((g > 0).sum()) <= 2:
            p[i] = (g > 0).double()
            continue
        capped = torch.zeros(4, dtype=torch.bool)
        for _ in range(4):
            c = (2 - capped.sum()) / g[~capped].sum()
            q = torch.where(capped, torch.ones_like(g), c * g)
            if bool((q <= 1 + 1e-12).all()):
                break
            capped |= q > 1
        p[i] = q
    return p


def _groups():
    # ordinary, one dominant (p would exceed 1), two equal dominants, zeros, a single non-zero, all zero
    rows = [[0.3, -1.2, 0.5, 0.1], [5.0, 0.2, -0.3, 0.1], [-3.0, 3.0, 0.1, 0.2], [0.0, 1.0, -2.0, 0.5],
            [0.0, 0.0, 0.7, 0.0], [0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0], [-0.01, 0.02, 4.0, -0.03]]
    return torch.tensor(rows)


def test_mvue24_unbiased_and_variance():
    a = _groups()  # 8 groups of 4
    n = 20000
    g = a.reshape(1, -1).repeat(n, 1)  # every row draws independently (Philox counter = group index)
    out = mvue_24(g, torch.Generator().manual_seed(0)).double().reshape(n, 8, 4)
    assert int((out != 0).sum(-1).max()) <= 2
    p = _p24(a)
    ad = a.double()
    var = torch.where(p > 0, ad ** 2 * (1 / p.clamp_min(1e-300) - 1), torch.zeros_like(ad))
    m4 = torch.where(p > 0, (ad / p.clamp_min(1e-300) - ad) ** 4 * p + ad ** 4 * (1 - p), torch.zeros_like(ad))
    mean, emp_var = out.mean(0), out.var(0)
    # CLT: 5 standard errors (deterministic seed; a false alarm would need a 5-sigma event in 32 entries)
    assert bool(((mean - ad).abs() <= 5 * (var / n).sqrt() + 1e-5).all()), (mean - ad)
    assert bool(((emp_var - var).abs() <= 5 * (m4 / n).sqrt() + 1e-5).all()), (emp_var, var)
    # kept values are a_i / p_i
    kept = out != 0
    assert torch.allclose(out[kept], (ad / p.clamp_min(1e-300)).expand_as(out)[kept], rtol=1e-5)


def test_mvue12_unbiased_and_variance():
    a = torch.tensor([[0.3, -1.2, 5.0, 0.0, 0.0, 0.0, -2.0, 2.0]])
    n = 20000
    out = mvue_12(a.repeat(n, 1), torch.Generator().manual_seed(1)).double().reshape(n, 4, 2)
    assert int((out != 0).sum(-1).max()) <= 1
    ad = a.double().reshape(4, 2)
    s = ad.abs().sum(-1, keepdim=True)
    var = s * ad.abs() - ad ** 2
    assert bool(((out.mean(0) - ad).abs() <= 5 * (var / n).sqrt() + 1e-6).all())
    assert bool(((out.var(0) - var).abs() <= 0.05 * var + 1e-6).all())
    kept = out != 0
    assert torch.allclose(out[kept].abs(), s.expand(4, 2).expand_as(out)[kept])


@pytest.mark.parametrize("dtype", DT)
def test_mvue_seeded_and_dtypes(dtype):
    g = rand(16, 32, dtype, seed=7)
    a = mvue_24(g, torch.Generator().manual_seed(3))
    b = mvue_24(g, torch.Generator().manual_seed(3))
    c = mvue_24(g, torch.Generator().manual_seed(4))
    assert a.dtype == dtype and a.shape == g.shape
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert bool(((a != 0).reshape(16, 8, 4).sum(-1) <= 2).all())
    torch.manual_seed(0)
    d = mvue_24(g)
    torch.manual_seed(0)
    assert torch.equal(d, mvue_24(g))  # default generator: torch.manual_seed reproduces


# ------------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("call, match", [
    (lambda: compress_24(torch.randn(32, 20)), "cols divisible by 32"),
    (lambda: compress_24(torch.randn(32, 48)), "cols divisible by 32"),
    (lambda: compress_24(torch.randn(30, 32)), "rows divisible by 32"),
    (lambda: compress_24(torch.randn(32, 32), transposable=1), "transposable: expected a bool"),
    (lambda: compress_24(torch.randn(2, 32, 32)), "2-D"),
    (lambda: compress_24(torch.randint(0, 3, (32, 32))), "float32, float16 or bfloat16"),
    (lambda: compress_24(torch.randn(32, 32, dtype=torch.float64)), "float32, float16 or bfloat16"),
    (lambda: compress_24(torch.full((32, 32), float("nan"))), "NaN"),
    (lambda: compress_24([[1.0]]), "torch.Tensor"),
    (lambda: mask_24(torch.randn(8, 6)), "divisible by 4"),
    (lambda: mask_24(torch.randn(6, 8), transposable=True), "divisible by 4"),
    (lambda: decompress_24(torch.randn(32, 16), torch.zeros(32, 2, dtype=torch.int32)), "int16"),
    (lambda: decompress_24(torch.randn(32, 16), torch.zeros(32, 1, dtype=torch.int16)), "meta"),
    (lambda: mvue_24(torch.randn(4, 6)), "divisible by 4"),
    (lambda: mvue_12(torch.randn(4, 5)), "divisible by 2"),
    (lambda: mvue_24(torch.randn(4, 8), generator=3), "generator"),
    (lambda: mvue_24(torch.tensor([[1.0, float("inf"), 0.0, 0.0]])), "NaN or Inf"),
])
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_old_extension_gives_clear_error(monkeypatch):
    import sparse.ops.sparse24 as mod

    monkeypatch.setattr(mod, "ext", lambda: object())  # an extension without the sparse24_* symbols
    assert "predates" in mod.native_reason()
    with pytest.raises(RuntimeError, match="predates the 2:4 kernels"):
        compress_24(torch.randn(32, 32))


def test_fake_kernels():
    w = rand(64, 32)
    torch.library.opcheck(ops24._compress_t_op, (w,), test_utils=("test_schema", "test_faketensor"))
    torch.library.opcheck(ops24._decompress_op, compress_24(w), test_utils=("test_schema", "test_faketensor"))
    torch.library.opcheck(ops24._mvue_op, (w, torch.tensor([1, 2]), 4), test_utils=("test_schema", "test_faketensor"))


def test_empty():
    v, m = compress_24(torch.zeros(0, 32))
    assert v.shape == (0, 16) and m.shape == (0, 2)
    assert mvue_24(torch.zeros(0, 8)).shape == (0, 8)


try:
    from hypothesis import given
    from hypothesis import strategies as st
except ImportError:  # hypothesis is a test extra
    given = None

if given is not None:
    @given(rt=st.integers(1, 3), ct=st.integers(1, 3), dtype=st.sampled_from(DT), seed=st.integers(0, 2**31 - 1),
           ints=st.booleans())
    def test_property_round_trip_and_validity(rt, ct, dtype, seed, ints):
        from sparse.masks import is_nm, is_transposable

        g = torch.Generator().manual_seed(seed)
        w = (torch.randint(-3, 4, (32 * rt, 32 * ct), generator=g).float() if ints
             else torch.randn(32 * rt, 32 * ct, generator=g)).to(dtype)
        v, m, vt, mt = compress_24(w, transposable=True)
        mask = mask_24(w, True)
        assert is_transposable(mask, 2, 4) and is_nm(mask_24(w), 2, 4)
        assert torch.equal(decompress_24(v, m), w * mask) and torch.equal(decompress_24(vt, mt), (w * mask).t())
        assert torch.equal(decompress_24(*compress_24(w)), w * mask_24(w))
