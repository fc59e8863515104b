"""Hostile inputs to every public function of sparse.masks: each gets a ValueError naming the argument,
or the right result. Also: the same input gives the same mask on every backend (fp64 beyond fp32 range
and below fp32 precision, huge fp32, negative zeros)."""
import numpy as np
import pytest
import torch

from sparse.masks import complete_tiles, is_nm, is_transposable, mask_diversity, nm_mask, transposable_mask
from sparse.ops import use_backend
from testkit import kept, requires_ext

MASKERS = {
    "nm": lambda w, n=2, m=4, **kw: nm_mask(w, n, m, **kw),
    "exact": lambda w, n=2, m=4, **kw: transposable_mask(w, n, m, "exact", **kw),
    "greedy": lambda w, n=2, m=4, **kw: transposable_mask(w, n, m, "greedy", **kw),
    "approx": lambda w, n=2, m=4, **kw: transposable_mask(w, n, m, "approx", **kw),
}


def _bad_weights():
    return {
        "meta": (torch.randn(8, 8, device="meta"), "weight: expected a tensor with data"),
        "numpy": (np.ones((8, 8), dtype=np.float32), "weight: expected a torch.Tensor, got ndarray"),
        "int": (5, "weight: expected a torch.Tensor, got int"),
        "none": (None, "weight: expected a torch.Tensor, got NoneType"),
        "0d": (torch.tensor(1.0), "weight: expected a 2-D tensor"),
        "3d": (torch.randn(2, 8, 8), "weight: expected a 2-D tensor"),
        "empty": (torch.randn(0, 8), "weight: expected a non-empty tensor"),
        "complex": (torch.randn(8, 8, dtype=torch.complex64), "weight: expected a floating-point tensor"),
        "bool": (torch.ones(8, 8, dtype=torch.bool), "weight: expected a floating-point tensor"),
        "int32": (torch.ones(8, 8, dtype=torch.int32), "weight: expected a floating-point tensor"),
        "sparse_coo": (torch.randn(8, 8).to_sparse(), "weight: expected a dense"),
        "nan": (torch.full((8, 8), float("nan")), "weight: expected finite values"),
    }


@pytest.mark.parametrize("kind", list(MASKERS))
@pytest.mark.parametrize("case", list(_bad_weights()))
def test_bad_weights_are_value_errors_naming_weight(kind, case):
    w, match = _bad_weights()[case]
    with pytest.raises(ValueError, match=match):
        MASKERS[kind](w)


@pytest.mark.parametrize("kind", list(MASKERS))
@pytest.mark.parametrize("n,m,match", [
    (True, 4, "n: expected an int, got bool"),
    (2, None, "m: expected an int, got NoneType"),
    ("2", 4, "n: expected an int, got str"),
    (-1, 4, "n: expected 1 <= n"),
    (2, 10 ** 20, "m: expected 2 <= m <= 32"),
    (2 ** 70, 4, "n: expected n < m"),
    (1, 1, "m: expected 2 <= m"),
    (2, 4.0, "m: expected an int, got float"),
])
def test_bad_n_m(kind, n, m, match):
    with pytest.raises(ValueError, match=match):
        MASKERS[kind](torch.randn(8, 8), n, m)


@pytest.mark.parametrize("kind", list(MASKERS))
@pytest.mark.parametrize("pad", ["yes", 1, None])
def test_pad_must_be_a_bool(kind, pad):
    with pytest.raises(ValueError, match="pad: expected True or False"):
        MASKERS[kind](torch.randn(6, 6), pad=pad)


@pytest.mark.parametrize("method", [None, 3, "EXACT", ""])
def test_bad_method(method):
    with pytest.raises(ValueError, match="method: expected one of"):
        transposable_mask(torch.randn(8, 8), 2, 4, method)


@pytest.mark.parametrize("dim", [True, 1.0, None, 2, -3])
def test_bad_dim(dim):
    with pytest.raises(ValueError, match="dim: expected one of"):
        nm_mask(torch.randn(8, 8), 2, 4, dim=dim)


@pytest.mark.parametrize("kind", list(MASKERS))
def test_numpy_integers_are_ints(kind):
    w = torch.randn(8, 8)
    assert torch.equal(MASKERS[kind](w, np.int64(2), np.int32(4)), MASKERS[kind](w, 2, 4))


@pytest.mark.parametrize("kind", list(MASKERS))
@pytest.mark.parametrize("layout", ["transposed", "expanded", "sliced", "parameter"])
def test_strided_inputs_give_the_contiguous_result(kind, layout):
    base = torch.randn(16, 16, generator=torch.Generator().manual_seed(3))
    torch.manual_seed(0)
    w = {"transposed": base.t(), "expanded": base[:1].expand(16, 16), "sliced": torch.randn(16, 32)[:, ::2],
         "parameter": torch.nn.Parameter(base)}[layout]
    assert torch.equal(MASKERS[kind](w), MASKERS[kind](w.detach().contiguous().clone()))


@pytest.mark.parametrize("kind", list(MASKERS))
@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e5m2, torch.float16, torch.bfloat16])
def test_low_precision_floats_give_the_mask_of_their_fp32_values(kind, dtype):
    w = torch.randn(16, 16, generator=torch.Generator().manual_seed(4)).to(dtype)
    assert torch.equal(MASKERS[kind](w), MASKERS[kind](w.float()))


@pytest.mark.parametrize("kind", list(MASKERS))
def test_negative_zeros_are_zeros(kind):
    # -0.0 has the sign bit set: a bit-pattern sort key would rank it above every positive value.
    w = torch.tensor([[-0.0, 0.0, 1.0, 2.0]] * 4).repeat(2, 2)
    w[0, 0] = -0.0
    pos = w.abs()
    assert torch.equal(MASKERS[kind](w), MASKERS[kind](pos))
    if kind != "nm":
        assert is_transposable(MASKERS[kind](w), 2, 4)


# ----------------------------------------------------------------------------- validators
@pytest.mark.parametrize("fn", [
    lambda mk: is_nm(mk, 2, 4), lambda mk: is_transposable(mk, 2, 4), lambda mk: complete_tiles(mk, 2, 4)])
@pytest.mark.parametrize("mask,match", [
    ([[True, False]], "mask: expected a torch.Tensor, got list"),
    (np.ones((4, 4), dtype=bool), "mask: expected a torch.Tensor, got ndarray"),
    (torch.ones(4, 4, dtype=torch.bool, device="meta"), "mask: expected a tensor with data"),
    (torch.ones(4, dtype=torch.bool), "mask: expected a 2-D tensor"),
    (torch.ones(2, 4, 4, dtype=torch.bool), "mask: expected a 2-D tensor"),
])
def test_validators_reject_bad_masks(fn, mask, match):
    with pytest.raises(ValueError, match=match):
        fn(mask)


@pytest.mark.parametrize("fn", [is_nm, is_transposable, complete_tiles])
def test_validators_reject_bad_n_m(fn):
    with pytest.raises(ValueError, match="n: expected"):
        fn(torch.ones(8, 8, dtype=torch.bool), 0, 4)
    with pytest.raises(ValueError, match="m: expected an int"):
        fn(torch.ones(8, 8, dtype=torch.bool), 2, 4.5)


def test_complete_tiles_with_shape_not_divisible_by_m():
    with pytest.raises(ValueError, match=r"mask: expected both sides multiples of m=4, got shape \(6, 8\)"):
        complete_tiles(torch.ones(6, 8, dtype=torch.bool), 2, 4)


def test_complete_tiles_right_results():
    mk = transposable_mask(torch.randn(8, 12), 2, 4)
    assert complete_tiles(mk, 2, 4).tolist() == [True] * 6
    mk[0, :] = True
    assert complete_tiles(mk, 2, 4).tolist() == [False, False, False, True, True, True]
    assert complete_tiles(mk.float(), 2, 4).tolist() == [False, False, False, True, True, True]


def test_validators_on_strided_and_numeric_masks():
    mk = transposable_mask(torch.randn(8, 8), 2, 4)
    assert is_transposable(mk.t(), 2, 4) and is_nm(mk.t(), 2, 4)
    assert is_nm(mk.to(torch.int8) * 7, 2, 4)
    assert not is_nm(torch.ones(4, 6, dtype=torch.bool), 2, 4)  # not divisible: not N:M, no error


@pytest.mark.parametrize("args,match", [
    ((2.5, 4), "n: expected an int"),
    ((2, 4, "yes"), "transposable: expected True or False"),
    ((2, 4, None), "transposable: expected True or False"),
    ((16, 32, True), "m: counting transposable masks of 16:32"),
    ((7, 24, True), "m: counting transposable masks of 7:24"),
])
def test_mask_diversity_bad_arguments(args, match):
    with pytest.raises(ValueError, match=match):
        mask_diversity(*args)


def test_mask_diversity_right_results():
    assert mask_diversity(np.int64(2), 4, transposable=np.bool_(True)) == 90
    assert mask_diversity(1, 32, transposable=True) == 263130836933693530167218012160000000  # 32!
    assert mask_diversity(31, 32, transposable=True) == mask_diversity(1, 32, transposable=True)


# ----------------------------------------------------------------------------- one mask on every backend
def _fp64_cases():
    g = torch.Generator().manual_seed(7)
    big = torch.randn(32, 32, generator=g, dtype=torch.float64) * 1e300           # beyond fp32 range
    fine = 1.0 + 1e-10 * torch.rand(32, 32, generator=g, dtype=torch.float64)     # ties in fp32
    fine = fine * torch.where(torch.rand(32, 32, generator=g) < 0.5, -1.0, 1.0).double()
    tiny = torch.randn(32, 32, generator=g, dtype=torch.float64) * 1e-300         # below fp32 range
    return {"big": big, "below_fp32_precision": fine, "tiny": tiny}


METHOD_CASES = [("nm", 2, 4), ("nm", 3, 8), ("exact", 2, 4), ("exact", 3, 8), ("greedy", 2, 4), ("greedy", 4, 8),
                ("approx", 2, 4), ("approx", 2, 8), ("approx", 4, 8), ("approx", 5, 16), ("flow", 2, 4)]


def _mask(kind, w, n, m):
    return nm_mask(w, n, m) if kind == "nm" else transposable_mask(w, n, m, kind)


@requires_ext
@pytest.mark.parametrize("kind,n,m", METHOD_CASES)
@pytest.mark.parametrize("case", list(_fp64_cases()))
def test_fp64_same_mask_on_every_backend(kind, n, m, case):
    w = _fp64_cases()[case]
    with use_backend("torch"):
        a = _mask(kind, w, n, m)
    with use_backend("csrc-cpu"):
        b = _mask(kind, w, n, m)
    assert torch.equal(a, b)
    if case == "below_fp32_precision" and kind in ("nm", "exact", "flow"):
        # fp64 resolves what fp32 would see as ties: the mask follows the fp64 magnitudes
        assert kept(w, a) >= kept(w, _mask(kind, w.float(), n, m))


@requires_ext
@pytest.mark.parametrize("kind,n,m", [("nm", 2, 4), ("exact", 2, 4), ("exact", 4, 8), ("greedy", 4, 8),
                                      ("approx", 3, 8), ("approx", 4, 8), ("approx", 8, 16)])
@pytest.mark.parametrize("scale", [1.0, 3e38, 1e-40])
def test_fp32_same_mask_on_every_backend(kind, n, m, scale):
    g = torch.Generator().manual_seed(m)
    sign = torch.where(torch.rand(32, 32, generator=g) < 0.5, -1.0, 1.0)
    w = torch.rand(32, 32, generator=g) * sign * scale  # 3e38: near FLT_MAX; 1e-40: subnormal
    with use_backend("torch"):
        a = _mask(kind, w, n, m)
    with use_backend("csrc-cpu"):
        b = _mask(kind, w, n, m)
    assert torch.equal(a, b)
    if kind != "nm":
        assert is_transposable(a, n, m)


def test_fp64_values_beyond_fp32_range_keep_their_order():
    w = torch.tensor([[1e300, 2e300, 3e300, 4e300]] * 4, dtype=torch.float64)
    assert nm_mask(w, 2, 4).tolist() == [[False, False, True, True]] * 4
    w = torch.tensor([[1.0 + 4e-12, 1.0 + 3e-12, 1.0 + 2e-12, 1.0 + 1e-12]] * 4, dtype=torch.float64)
    assert nm_mask(w, 2, 4).tolist() == [[True, True, False, False]] * 4
    assert nm_mask(w.flip(1), 2, 4).tolist() == [[False, False, True, True]] * 4
