import pytest
import torch

from sparse.masks import is_nm, is_transposable, mask_diversity, nm_mask, transposable_mask

FUNCS = [
    lambda w, n=2, m=4: nm_mask(w, n, m),
    lambda w, n=2, m=4: transposable_mask(w, n, m, "exact"),
    lambda w, n=2, m=4: transposable_mask(w, n, m, "greedy"),
]


@pytest.mark.parametrize("f", FUNCS)
@pytest.mark.parametrize("n,m,match", [(4, 4, "n < m"), (5, 4, "n < m"), (0, 4, "1 <= n"), (2, 33, "m <= 32"),
                                       (2.0, 4, "expected an int")])
def test_bad_n_m(f, n, m, match):
    with pytest.raises(ValueError, match=match):
        f(torch.randn(8, 8), n, m)


@pytest.mark.parametrize("f", FUNCS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_nan_and_inf(f, dtype):
    for bad in (float("nan"), float("inf"), -float("inf")):
        w = torch.randn(8, 8, dtype=dtype)
        w[3, 2] = bad
        with pytest.raises(ValueError, match="weight: expected finite values"):
            f(w)


@pytest.mark.parametrize("f", FUNCS)
@pytest.mark.parametrize("shape", [(8,), (2, 8, 8), (0, 8), (8, 0)])
def test_bad_shapes(f, shape):
    with pytest.raises(ValueError, match="weight: expected"):
        f(torch.randn(*shape))


def test_not_divisible_without_pad():
    with pytest.raises(ValueError, match="multiple of m=4.*pad=True"):
        nm_mask(torch.randn(4, 6), 2, 4)
    with pytest.raises(ValueError, match="dimension 0 has size 6"):
        transposable_mask(torch.randn(6, 8), 2, 4)


def test_not_a_tensor_and_int_dtype():
    with pytest.raises(ValueError, match="expected a torch.Tensor, got list"):
        nm_mask([[1.0, 2.0]], 1, 2)
    with pytest.raises(ValueError, match="floating-point"):
        nm_mask(torch.ones(4, 4, dtype=torch.int64), 2, 4)


def test_unknown_method_and_dim():
    with pytest.raises(ValueError, match="method: expected one of auto, exact"):
        transposable_mask(torch.randn(8, 8), 2, 4, method="hungarian")
    with pytest.raises(ValueError, match="dim: expected one of"):
        nm_mask(torch.randn(8, 8), 2, 4, dim=2)


def test_validators_reject_bad_args():
    with pytest.raises(ValueError, match="n: expected n < m"):
        is_nm(torch.ones(4, 4, dtype=torch.bool), 4, 4)
    with pytest.raises(ValueError, match="mask: expected a 2-D"):
        is_transposable(torch.ones(4, dtype=torch.bool), 2, 4)
    with pytest.raises(ValueError, match="n: expected"):
        mask_diversity(3, 3)
