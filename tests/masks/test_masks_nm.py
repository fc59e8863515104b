import pytest
import torch

from sparse.masks import is_nm, nm_mask
from sparse.ops import use_backend

from testkit import requires_ext

BACKENDS = ["torch", pytest.param("csrc-cpu", marks=requires_ext)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n,m", [(1, 2), (2, 4), (3, 4), (4, 8), (5, 16), (16, 32), (31, 32)])
def test_nm_mask_is_optimal_per_group(backend, n, m):
    w = torch.randn(8, 4 * m, generator=torch.Generator().manual_seed(n * 100 + m))
    with use_backend(backend):
        mask = nm_mask(w, n, m)
    assert mask.dtype == torch.bool and mask.shape == w.shape
    assert is_nm(mask, n, m)
    g, gm = w.abs().reshape(-1, m), mask.reshape(-1, m)
    kept_min = torch.where(gm, g, torch.inf).amin(1)
    dropped_max = torch.where(gm, -torch.inf, g).amax(1)
    assert bool((kept_min >= dropped_max).all())


@pytest.mark.parametrize("backend", BACKENDS)
def test_nm_mask_dim0_is_transpose_of_dim1(backend):
    w = torch.randn(16, 12)
    with use_backend(backend):
        a = nm_mask(w, 2, 4, dim=0)
        b = nm_mask(w.t().contiguous(), 2, 4, dim=1).t()
    assert torch.equal(a, b)
    assert is_nm(a, 2, 4, dim=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_ties_break_towards_lower_index(backend):
    w = torch.ones(2, 8)
    with use_backend(backend):
        mask = nm_mask(w, 2, 4)
    assert mask.tolist() == [[True, True, False, False] * 2] * 2


@requires_ext
def test_csrc_and_torch_agree_including_ties():
    g = torch.Generator().manual_seed(3)
    w = torch.randint(-2, 3, (64, 64), generator=g).float()
    with use_backend("csrc-cpu"):
        a = nm_mask(w, 2, 4)
    with use_backend("torch"):
        b = nm_mask(w, 2, 4)
    assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_dtypes(dtype):
    w = torch.randn(8, 16).to(dtype)
    mask = nm_mask(w, 2, 4)
    assert mask.dtype == torch.bool and is_nm(mask, 2, 4)


def test_pad_handles_tail_and_crops():
    w = torch.randn(3, 10)
    mask = nm_mask(w, 2, 4, pad=True)
    assert mask.shape == (3, 10)
    assert is_nm(mask[:, :8], 2, 4)
    assert bool((mask[:, 8:].sum(1) == 2).all())  # the 2 real entries of the tail beat the zero padding


def test_is_nm_rejects_wrong_counts():
    mask = torch.tensor([[True, True, False, False], [True, False, False, False]])
    assert not is_nm(mask, 2, 4)
    assert not is_nm(torch.ones(2, 6, dtype=torch.bool), 2, 4)  # not divisible
