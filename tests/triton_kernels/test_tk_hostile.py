"""Hostile inputs to the triton_kernels launchers (run by triton's CPU interpreter): bad arguments get a
ValueError naming the argument; index tensors with out-of-range values (the launchers do not read them:
that would cost a host sync per launch) never make a kernel touch memory outside its operands, because
the kernels clamp every index they load."""
import importlib.util
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton not installed")

import triton_kernels as tk  # noqa: E402
from sparse.ops import BlockLayout  # noqa: E402


@pytest.fixture(autouse=True)
def interpret(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    mod = sys.modules.get("triton_kernels._block_sparse_kernels")
    if mod is not None and type(mod._dds_kernel).__name__ != "InterpretedFunction":
        pytest.skip("kernels were compiled for CUDA earlier in this process; run this file on its own")


def _case():
    lay = BlockLayout.from_mask(torch.tensor([[1, 1, 0], [0, 1, 1]], dtype=torch.bool), 16)
    data = torch.randn(lay.nnz, 16, 16, generator=torch.Generator().manual_seed(0))
    return lay, data


def _bad_calls():
    lay, data = _case()
    x = torch.randn(4, 48)
    idx = (lay.crow, lay.col, lay.ccol, lay.row_t, lay.perm_t)
    return {
        "a_list": (lambda: tk.dds(x.tolist(), data, lay.shape, 16, *idx, trans_b=True), "a: expected a torch.Tensor"),
        "a_numpy": (lambda: tk.dds(x.numpy(), data, lay.shape, 16, *idx, trans_b=True), "a: expected a torch.Tensor"),
        "a_meta": (lambda: tk.dds(x.to("meta"), data, lay.shape, 16, *idx, trans_b=True),
                   "a: expected a tensor with data"),
        "a_int": (lambda: tk.dds(x.int(), data, lay.shape, 16, *idx, trans_b=True), "a: expected dtype float32"),
        "data_none": (lambda: tk.dds(x, None, lay.shape, 16, *idx, trans_b=True), "b_data: expected a torch.Tensor"),
        "data_meta": (lambda: tk.dds(x, data.to("meta"), lay.shape, 16, *idx, trans_b=True),
                      "b_data: expected a tensor with data"),
        "shape_none": (lambda: tk.dds(x, data, None, 16, *idx, trans_b=True), "shape: expected"),
        "shape_1": (lambda: tk.dds(x, data, (32,), 16, *idx, trans_b=True), "shape: expected"),
        "shape_negative": (lambda: tk.dds(x, data, (-32, 48), 16, *idx, trans_b=True), "shape: expected"),
        "shape_str": (lambda: tk.dds(x, data, ("32", 48), 16, *idx, trans_b=True), "shape: expected"),
        "block_bool": (lambda: tk.dds(x, data, lay.shape, True, *idx, trans_b=True), "block: expected one of"),
        "block_float": (lambda: tk.dds(x, data, lay.shape, 16.0, *idx, trans_b=True), "block: expected one of"),
        "trans_str": (lambda: tk.dds(x, data, lay.shape, 16, *idx, trans_b="yes"), "trans_b: expected True or False"),
        "dsd_trans_none": (lambda: tk.dsd(data, lay.shape, 16, *idx, x.t(), trans_a=None),
                           "trans_a: expected True or False"),
        "index_meta": (lambda: tk.dds(x, data, lay.shape, 16, lay.crow.to("meta"), *idx[1:], trans_b=True),
                       "crow: expected a contiguous 1-D torch.int32 tensor"),
        "index_list": (lambda: tk.dds(x, data, lay.shape, 16, lay.crow.tolist(), *idx[1:], trans_b=True),
                       "crow: expected a contiguous 1-D torch.int32 tensor .* got list"),
        "index_strided": (lambda: tk.dds(x, data, lay.shape, 16, torch.zeros(6, dtype=torch.int32)[::2], *idx[1:],
                                         trans_b=True), "crow: expected a contiguous"),
        "sdd_row_none": (lambda: tk.sdd(torch.randn(32, 4), torch.randn(4, 48), lay.shape, 16, None, lay.col),
                         "row: expected a contiguous 1-D torch.int32 tensor"),
        "sdd_b_complex": (lambda: tk.sdd(torch.randn(32, 4), torch.randn(4, 48, dtype=torch.complex64), lay.shape, 16,
                                         lay.row, lay.col), "b: expected dtype"),
    }


@pytest.mark.parametrize("case", list(_bad_calls()))
def test_launchers_bad_arguments(case):
    call, match = _bad_calls()[case]
    with pytest.raises(ValueError, match=match):
        call()


def test_expanded_and_empty_operands_give_the_right_result():
    lay, data = _case()
    s = lay.to_dense(data)
    x = torch.randn(48, 1).t().expand(5, 48)                      # stride 0 along the rows
    idx = (lay.crow, lay.col, lay.ccol, lay.row_t, lay.perm_t)
    torch.testing.assert_close(tk.dds(x, data, lay.shape, 16, *idx, trans_b=True), x @ s.t(), rtol=1e-5, atol=1e-5)
    assert tk.dds(x[:0], data, lay.shape, 16, *idx, trans_b=True).shape == (0, 32)
    torch.testing.assert_close(tk.dsd(data, lay.shape, 16, *idx, x.t()), s @ x.t(), rtol=1e-5, atol=1e-5)


_OOB_SCRIPT = textwrap.dedent("""
    import os, torch
    os.environ["TRITON_INTERPRET"] = "1"
    import triton_kernels as tk
    from sparse.ops import BlockLayout
    lay = BlockLayout.from_mask(torch.tensor([[1, 1, 0], [0, 1, 1]], dtype=torch.bool), 16)
    data = torch.randn(lay.nnz, 16, 16)
    x = torch.randn(4, 48)
    edits = {"col": 1 << 28, "row_t": -(1 << 28), "perm_t": 1 << 28, "crow": 1 << 28, "ccol": -5, "row": 1 << 28}
    for field, value in edits.items():
        t = {f: getattr(lay, f).clone() for f in ("crow", "col", "row", "ccol", "row_t", "perm_t")}
        t[field][1] = value
        idx = (t["crow"], t["col"], t["ccol"], t["row_t"], t["perm_t"])
        outs = [tk.dds(x, data, lay.shape, 16, *idx, trans_b=True), tk.dds(torch.randn(4, 32), data, lay.shape, 16, *idx),
                tk.dsd(data, lay.shape, 16, *idx, torch.randn(48, 3)),
                tk.dsd(data, lay.shape, 16, *idx, torch.randn(32, 3), trans_a=True),
                tk.sdd(torch.randn(32, 8), torch.randn(8, 48), lay.shape, 16, t["row"], t["col"])]
        print("ran", field, [tuple(o.shape) for o in outs], flush=True)
""")


def test_out_of_range_indices_never_read_outside_the_operands():
    proc = subprocess.run([sys.executable, "-c", _OOB_SCRIPT], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "TRITON_INTERPRET": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("ran ") == 6, proc.stdout
