import pytest
import torch

from sparse.ops import Op, forced_backend, last_backend, use_backend


def make_op():
    op = Op("test_op")

    @op.register("csrc-cpu", lambda x: None if x.device.type == "cpu" and x.numel() < 100 else "too big")
    def _cpu(x):
        return "csrc-cpu"

    @op.register("torch")
    def _torch(x):
        return "torch"

    return op


def test_first_usable_backend_runs_and_is_recorded():
    op = make_op()
    assert op(torch.zeros(3)) == "csrc-cpu" and last_backend("test_op") == "csrc-cpu"
    assert op(torch.zeros(1000)) == "torch" and last_backend("test_op") == "torch"


def test_use_backend_forces_and_refuses_silent_fallback():
    op = make_op()
    with use_backend("torch"):
        assert forced_backend() == "torch"
        assert op(torch.zeros(3)) == "torch"
    with use_backend("csrc-cpu"), pytest.raises(RuntimeError, match="forced backend 'csrc-cpu' cannot run.*too big"):
        op(torch.zeros(1000))
    assert forced_backend() is None


def test_env_var_forces(monkeypatch):
    op = make_op()
    monkeypatch.setenv("SPARSE_BACKEND", "torch")
    assert op(torch.zeros(3)) == "torch"
    monkeypatch.setenv("SPARSE_BACKEND", "gpu9000")
    with pytest.raises(ValueError, match="SPARSE_BACKEND: expected one of csrc-cuda, csrc-cpu, triton, torch, got 'gpu9000'"):
        op(torch.zeros(3))


def test_bad_backend_names():
    with pytest.raises(ValueError, match=r"use_backend\(name\): expected one of"):
        with use_backend("fast"):
            pass
    with pytest.raises(ValueError, match="register"):
        Op("x").register("opencl")


def test_one_name_per_backend_everywhere():
    """The dispatcher, sparse.backends() and every registered op use the same backend names."""
    import sparse
    import sparse.masks  # noqa: F401  (registers the mask ops)
    from sparse.ops import BACKENDS
    from sparse.ops import block_sparse
    from sparse.masks import nm, transposable

    assert set(BACKENDS) == set(sparse.backends())
    ops = [nm.nm_op, transposable.exact_op, transposable.greedy_op, transposable.approx_op, transposable.enum_op,
           block_sparse.dds_op, block_sparse.dsd_op, block_sparse.sdd_op, block_sparse.linear_op,
           block_sparse.sdd_rowsum_op]
    for op in ops:
        assert {i.backend for i in op.impls} <= set(BACKENDS), op.name
    with pytest.raises(ValueError, match="expected one of csrc-cuda, csrc-cpu, triton, torch, got 'cpu'"):
        with use_backend("cpu"):
            pass
