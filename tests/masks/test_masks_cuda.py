"""CUDA paths: same results as the CPU paths (skipped cleanly without a GPU)."""
import pytest
import torch

from sparse.masks import is_transposable, nm_mask, transposable_mask

from testkit import requires_cuda


@requires_cuda
@pytest.mark.parametrize("method", ["exact", "approx", "greedy"])
@pytest.mark.parametrize("n,m", [(2, 4), (4, 8)])
def test_cuda_follows_device_and_matches_cpu(method, n, m):
    w = torch.randn(8 * m, 8 * m)
    cpu = transposable_mask(w, n, m, method)
    gpu = transposable_mask(w.cuda(), n, m, method)
    assert gpu.device.type == "cuda" and is_transposable(gpu.cpu(), n, m)
    sc = w.abs().double()
    assert float((sc * gpu.cpu()).sum()) == pytest.approx(float((sc * cpu).sum()), rel=1e-5)


@requires_cuda
def test_cuda_nm_matches_cpu():
    w = torch.randn(64, 64)
    assert torch.equal(nm_mask(w.cuda(), 2, 4).cpu(), nm_mask(w, 2, 4))
