import pytest
import torch

from sparse.ops import Op, forced_backend, last_backend, use_backend


def make_op():
    op = Op("test_op")

    @op.register("cpu", lambda x: None if x.device.type == "cpu" and x.numel() < 100 else "too big")
    def _cpu(x):
        return "cpu"

    @op.register("torch")
    def _torch(x):
        return "torch"

    return op


def test_first_usable_backend_runs_and_is_recorded():
    op = make_op()
    assert op(torch.zeros(3)) == "cpu" and last_backend("test_op") == "cpu"
    assert op(torch.zeros(1000)) == "torch" and last_backend("test_op") == "torch"


def test_use_backend_forces_and_refuses_silent_fallback():
    op = make_op()
    with use_backend("torch"):
        assert forced_backend() == "torch"
        assert op(torch.zeros(3)) == "torch"
    with use_backend("cpu"), pytest.raises(RuntimeError, match="forced backend 'cpu' cannot run.*too big"):
        op(torch.zeros(1000))
    assert forced_backend() is None


def test_env_var_forces(monkeypatch):
    op = make_op()
    monkeypatch.setenv("SPARSE_BACKEND", "torch")
    assert op(torch.zeros(3)) == "torch"
    monkeypatch.setenv("SPARSE_BACKEND", "gpu9000")
    with pytest.raises(ValueError, match="SPARSE_BACKEND: expected one of cuda, cpu, triton, torch, got 'gpu9000'"):
        op(torch.zeros(3))


def test_bad_backend_names():
    with pytest.raises(ValueError, match=r"use_backend\(name\): expected one of"):
        with use_backend("fast"):
            pass
    with pytest.raises(ValueError, match="register"):
        Op("x").register("opencl")
