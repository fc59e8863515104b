"""Hostile inputs to sparse.ops (BlockLayout, the block-sparse ops, dispatch helpers) and direct calls into
the native entry points (sparse._C, torch.ops.sparse) with bad indices: a ValueError naming the argument
from Python, a RuntimeError from C++, never a crash or silent garbage. Crash-prone calls run in a
subprocess so that a segfault fails the test instead of killing pytest."""
import dataclasses
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from sparse.ops import BlockLayout, block_sparse as bs, use_backend
from testkit import has_ext, requires_ext

BACKENDS = ["torch"] + (["csrc-cpu"] if has_ext() else [])


def _mask():
    return torch.tensor([[1, 1, 0], [0, 1, 1]], dtype=torch.bool)


def _case(block=16, dtype=torch.float32):
    lay = BlockLayout.from_mask(_mask(), block)
    data = torch.randn(lay.nnz, block, block, generator=torch.Generator().manual_seed(0)).to(dtype)
    return lay, data


# ----------------------------------------------------------------------------- BlockLayout
@pytest.mark.parametrize("mask,block,match", [
    (torch.ones(2, 2, dtype=torch.bool, device="meta"), 16, "block_mask: expected a tensor with data"),
    (np.ones((2, 2), dtype=bool), 16, "block_mask: expected a 2-D torch.bool tensor .*got ndarray"),
    ([[True]], 16, "block_mask: expected a 2-D torch.bool tensor .*got list"),
    (torch.ones(2, 2, dtype=torch.int64), 16, "block_mask: expected a 2-D torch.bool"),
    (torch.ones(2, 2, dtype=torch.bool), 32.0, "block: expected one of"),
    (torch.ones(2, 2, dtype=torch.bool), None, "block: expected one of"),
    (torch.ones(2, 2, dtype=torch.bool), 2 ** 40, "block: expected one of"),
])
def test_from_mask_bad_arguments(mask, block, match):
    with pytest.raises(ValueError, match=match):
        BlockLayout.from_mask(mask, block)


def test_from_mask_accepts_numpy_block_size_and_strided_masks():
    lay = BlockLayout.from_mask(_mask().t().contiguous().t(), np.int64(16))
    assert lay.block == 16 and isinstance(lay.block, int)
    assert torch.equal(lay.mask(), _mask())
    big = torch.zeros(4, 6, dtype=torch.bool)
    big[::2, ::2] = True
    assert torch.equal(BlockLayout.from_mask(big[::2, ::2], 16).mask(), torch.ones(2, 3, dtype=torch.bool))


@pytest.mark.parametrize("field,value,match", [
    ("col", torch.tensor([0, 1, 1, 100000], dtype=torch.int32), r"layout.col: expected block columns in \[0, 3\)"),
    ("col", torch.tensor([0, 1, 1, -1], dtype=torch.int32), r"layout.col: expected block columns in \[0, 3\)"),
    ("crow", torch.tensor([0, 3, 2], dtype=torch.int32), "layout.crow: expected non-decreasing"),
    ("crow", torch.tensor([[0, 2, 4]], dtype=torch.int32), "layout.crow: expected a 1-D torch.int32"),
    ("crow", torch.tensor([0, 2, 4], dtype=torch.int32, device="meta"), "layout.crow: expected a tensor with data"),
    ("perm_t", torch.tensor([0, 1, 2, 4], dtype=torch.int32), "layout.perm_t: expected a permutation"),
    ("row", torch.tensor([0, 0, 1, 0], dtype=torch.int32), "layout.row: expected the block row"),
    ("crow", [0, 2, 4], "layout.crow: expected a 1-D torch.int32 tensor, got list"),
])
def test_constructor_rejects_bad_index_tensors(field, value, match):
    with pytest.raises(ValueError, match=match):
        dataclasses.replace(_case()[0], **{field: value})


def test_from_tensors_needs_six_tensors():
    lay = _case()[0]
    for validate in (True, False):
        with pytest.raises(ValueError, match="tensors: expected the 6 index tensors"):
            BlockLayout.from_tensors(16, lay.shape, lay.tensors()[:5], validate=validate)
    with pytest.raises(ValueError, match="shape: expected"):
        BlockLayout.from_tensors(16, (32,), lay.tensors())


@pytest.mark.parametrize("call,match", [
    (lambda lay, d: lay.from_dense([[1.0]]), "dense: expected a tensor"),
    (lambda lay, d: lay.from_dense(torch.randn(48)), "dense: expected shape"),
    (lambda lay, d: lay.to_dense(d.numpy()), "data: expected a tensor"),
    (lambda lay, d: lay.to_dense(d[:3]), "data: expected block data of shape"),
    (lambda lay, d: lay.to_dense(d.to("meta")), "data: expected a tensor on the layout's device"),
])
def test_dense_conversions_bad_arguments(call, match):
    lay, data = _case()
    with pytest.raises(ValueError, match=match):
        call(lay, data)


# ----------------------------------------------------------------------------- the ops
def _ops_bad_cases():
    lay, data = _case()
    x = torch.randn(5, 48)
    return {
        "a_meta": (lambda: bs.dds(x.to("meta"), data, lay, trans_b=True), "a: expected a tensor on the layout"),
        "a_numpy": (lambda: bs.dds(x.numpy(), data, lay, trans_b=True), "a: expected a torch.Tensor, got ndarray"),
        "a_int": (lambda: bs.dds(x.long(), data, lay, trans_b=True), "a: expected dtype float32"),
        "a_complex": (lambda: bs.dds(x.to(torch.complex64), data, lay, trans_b=True), "a: expected dtype float32"),
        "a_fp64": (lambda: bs.dds(x.double(), data.double(), lay, trans_b=True), "a: expected dtype float32"),
        "a_1d": (lambda: bs.dds(x[0], data, lay, trans_b=True), "a: expected a dense tensor"),
        "data_none": (lambda: bs.dds(x, None, lay, trans_b=True), "b_data: expected a torch.Tensor, got NoneType"),
        "data_short": (lambda: bs.dds(x, data[:3], lay, trans_b=True), "b_data: expected block data of shape"),
        "layout_mask": (lambda: bs.dds(x, data, lay.mask(), trans_b=True), "layout: expected a sparse.ops"),
        "trans_str": (lambda: bs.dds(x, data, lay, trans_b="yes"), "trans_b: expected True or False"),
        "trans_none": (lambda: bs.dsd(data, lay, x.t(), trans_a=None), "trans_a: expected True or False"),
        "sdd_int_b": (lambda: bs.sdd(torch.randn(32, 4), torch.ones(4, 48, dtype=torch.int32), lay),
                      "b: expected dtype float32"),
        "sdd_trans": (lambda: bs.sdd(torch.randn(32, 4), torch.randn(4, 48), lay, trans_a=1),
                      "trans_a: expected True or False"),
        "linear_x_meta": (lambda: bs.linear(x.to("meta"), data, None, lay), "x: expected a tensor on the layout"),
        "linear_x_list": (lambda: bs.linear([[1.0]], data, None, lay), "x: expected a 2-D tensor"),
        "linear_w_int": (lambda: bs.linear(x, data.int(), None, lay), "w_data: expected dtype"),
        "linear_bias_list": (lambda: bs.linear(x, data, [0.0] * 32, lay), "bias: expected None or a 1-D"),
    }


@pytest.mark.parametrize("case", list(_ops_bad_cases()))
def test_ops_bad_arguments_are_value_errors(case):
    call, match = _ops_bad_cases()[case]
    with pytest.raises(ValueError, match=match):
        call()


def _ref_dds(x, data, lay):
    return x @ lay.to_dense(data).t()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["transposed", "expanded", "empty", "nan"])
def test_ops_odd_but_valid_inputs_give_the_right_result(backend, kind):
    lay, data = _case()
    base = torch.randn(48, 5, generator=torch.Generator().manual_seed(1))
    x = {"transposed": base.t(), "expanded": base[:, :1].t().expand(5, 48), "empty": torch.randn(0, 48),
         "nan": base.t().contiguous()}[kind]
    if kind == "nan":
        x[2, 3] = float("nan")
    with use_backend(backend):
        y = bs.dds(x, data, lay, trans_b=True)
    ref = _ref_dds(x.nan_to_num(), data, lay)
    assert y.shape == ref.shape
    if kind == "nan":
        # x[2, 3] feeds input block 0, which only output block 0 keeps: NaN exactly there, nowhere else
        assert bool(y[2, :16].isnan().all()) and not bool(y[2, 16:].isnan().any())
        y, ref = y[[0, 1, 3, 4]], ref[[0, 1, 3, 4]]
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)


def test_layout_to_bad_devices():
    lay = _case()[0]
    with pytest.raises(ValueError, match="device: expected a torch.device"):
        lay.to("nonsense")
    with pytest.raises(ValueError, match="layout.crow: expected a tensor with data"):
        lay.to("meta")


def _edge_cases():
    full = BlockLayout.from_mask(torch.ones(2, 3, dtype=torch.bool), 16)
    empty = BlockLayout.from_mask(torch.zeros(2, 3, dtype=torch.bool), 16)
    nothing = BlockLayout.from_mask(torch.zeros(0, 0, dtype=torch.bool), 16)
    d6, d0 = torch.randn(6, 16, 16), torch.zeros(0, 16, 16)
    return {
        "zero_size_layout": (lambda: bs.dds(torch.randn(3, 0), d0, nothing), (3, 0)),
        "no_blocks_dds": (lambda: bs.dds(torch.randn(3, 48), d0, empty, trans_b=True), (3, 32)),
        "no_blocks_sdd": (lambda: bs.sdd(torch.randn(32, 4), torch.randn(4, 48), empty), (0, 16, 16)),
        "no_blocks_linear_bias": (lambda: bs.linear(torch.randn(3, 48), d0, torch.ones(32), empty), (3, 32)),
        "sdd_k0": (lambda: bs.sdd(torch.randn(32, 0), torch.randn(0, 48), full), (6, 16, 16)),
        "dds_batch0": (lambda: bs.dds(torch.randn(0, 5, 48), d6, full, trans_b=True), (0, 5, 32)),
        "dds_4d": (lambda: bs.dds(torch.randn(2, 2, 5, 48), d6, full, trans_b=True), (2, 2, 5, 32)),
        "dds_per_batch_data": (lambda: bs.dds(torch.randn(2, 5, 48), torch.randn(2, 6, 16, 16), full, trans_b=True),
                               (2, 5, 32)),
        "dsd_expanded_data": (lambda: bs.dsd(torch.randn(1, 16, 16).expand(6, 16, 16), full, torch.randn(48, 3)),
                              (32, 3)),
    }


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", list(_edge_cases()))
def test_edge_shapes_give_the_right_result(backend, case):
    call, shape = _edge_cases()[case]
    torch.manual_seed(0)
    with use_backend(backend):
        out = call()
    torch.manual_seed(0)
    with use_backend("torch"):
        ref = call()
    assert tuple(out.shape) == shape
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    if case == "no_blocks_linear_bias":
        assert torch.equal(out, torch.ones(3, 32))
    elif case in ("no_blocks_dds", "sdd_k0", "zero_size_layout"):
        assert not bool(out.any())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("field,value", [("col", 100000), ("col", -1), ("perm_t", 7), ("row_t", 5), ("crow", 9)])
def test_index_written_in_place_after_validation_is_caught_at_the_call(backend, field, value):
    lay, data = _case()
    x = torch.randn(5, 48)
    with use_backend(backend):
        bs.dds(x, data, lay, trans_b=True)           # validated once ...
        getattr(lay, field)[1] = value               # ... then edited in place
        with pytest.raises(ValueError, match=f"layout.{field}|layout.row|layout.ccol|transpose metadata"):
            bs.dds(x, data, lay, trans_b=True)
            bs.dds(x, data, lay, trans_b=False)


@pytest.mark.parametrize("backend", BACKENDS)
def test_unvalidated_layout_is_checked_at_the_call(backend):
    lay, data = _case()
    bad = list(t.clone() for t in lay.tensors())
    bad[1][0] = 100000
    unchecked = BlockLayout.from_tensors(16, lay.shape, bad, validate=False)
    with use_backend(backend), pytest.raises(ValueError, match=r"layout.col: expected block columns in \[0, 3\)"):
        bs.linear(torch.randn(5, 48), data, None, unchecked)


@pytest.mark.parametrize("op", ["bs_linear", "bs_dds", "bs_sdd"])
def test_custom_ops_called_directly_check_their_layout(op):
    lay, data = _case()
    crow, col, row, ccol, row_t, perm_t = (t.clone() for t in lay.tensors())
    col[2] = 100000
    meta = (crow, col, row, ccol, row_t, perm_t, 16, 32, 48)
    x = torch.randn(5, 48)
    call = {"bs_linear": lambda: torch.ops.sparse.bs_linear(x, data, None, *meta),
            "bs_dds": lambda: torch.ops.sparse.bs_dds(x, data, *meta, False, True),
            "bs_sdd": lambda: torch.ops.sparse.bs_sdd(torch.randn(32, 4), torch.randn(4, 48), *meta, False, False)}
    with pytest.raises(ValueError, match="layout.col"):
        call[op]()


def test_validation_is_cached_per_layout_version():
    from sparse.ops import layout as L

    lay, data = _case()
    x = torch.randn(5, 48)
    calls = []
    orig = L._validate_values
    try:
        L._validate_values = lambda *a, **k: (calls.append(1), orig(*a, **k))[1]
        for _ in range(3):
            bs.linear(x, data, None, lay)
        assert len(calls) == 0                   # validated at construction, never again while unchanged
        lay.col.add_(0)                          # an in-place write bumps the version: checked once more
        for _ in range(3):
            bs.linear(x, data, None, lay)
        assert len(calls) == 1
    finally:
        L._validate_values = orig


@pytest.mark.parametrize("name", [5, "CSRC", "cuda", ""])
def test_use_backend_bad_names(name):
    with pytest.raises(ValueError, match="use_backend"):
        with use_backend(name):
            pass


# ----------------------------------------------------------------------------- native entry points, directly
_NATIVE_CASES = {
    # name: python body using `C` (sparse._C), good operands a, data, crow, col, ccol, row_t, perm_t, i32
    "dds_idx_huge": "c = col.clone(); c[0] = 100000; C.bsr_dds(a, data, crow, c, E, True, 64)",
    "dds_idx_negative": "c = col.clone(); c[1] = -1; C.bsr_dds(a, data, crow, c, E, True, 64)",
    "dds_seg_not_monotone": "s = crow.clone(); s[1] = 9; C.bsr_dds(a, data, s, col, E, True, 64)",
    "dds_seg_end_not_nnz": "s = crow.clone(); s[-1] = 3; C.bsr_dds(a, data, s, col, E, True, 64)",
    "dds_seg_start_not_zero": "s = crow.clone(); s[0] = 1; C.bsr_dds(a, data, s, col, E, True, 64)",
    "dds_dptr_huge": "d = perm_t.clone(); d[0] = 1 << 30; C.bsr_dds(at, data, ccol, row_t, d, False, 64)",
    "dds_bf16_idx_huge": ("c = col32.clone(); c[0] = 100000; "
                          "C.bsr_dds(a32.bfloat16(), data32.bfloat16(), crow32, c, E, True, 64)"),
    "dds_data_not_3d": "C.bsr_dds(a, data[0], crow, col, E, True, 64)",
    "dds_idx_int64": "C.bsr_dds(a, data, crow, col.long(), E, True, 64)",
    "dds_bias_complex": "C.bsr_dds(a, data, crow, col, E, True, 64, torch.zeros(32, dtype=torch.complex64))",
    "sdd_col_huge": "c = col.clone(); c[0] = 100000; C.bsr_sdd(g, a, crow, c, ccol, row_t, perm_t, 16, True, False)",
    "sdd_crow_bad": "s = crow.clone(); s[1] = 7; C.bsr_sdd(g, a, s, col, ccol, row_t, perm_t, 16, True, False)",
    "sdd_bf16_perm_dup": ("p = perm_t32.clone(); p[1] = p[0]; "
                          "C.bsr_sdd(g32.bfloat16(), a32.bfloat16(), crow32, col32, ccol32, row_t32, p, 32, True, False)"),
    "sdd_bf16_perm_huge": ("p = perm_t32.clone(); p[1] = 1 << 30; "
                           "C.bsr_sdd(g32.bfloat16(), a32.bfloat16(), crow32, col32, ccol32, row_t32, p, 32, True, False)"),
    "sdd_bf16_row_t_huge": ("r = row_t32.clone(); r[0] = 1000; "
                            "C.bsr_sdd(g32.bfloat16(), a32.bfloat16(), crow32, col32, ccol32, r, perm_t32, 32, True, False)"),
    "sdd_bf16_ccol_bad": ("s = ccol32.clone(); s[1] = 4; "
                          "C.bsr_sdd(g32.bfloat16(), a32.bfloat16(), crow32, col32, s, row_t32, perm_t32, 32, True, False)"),
    "sdd_bf16_transpose_mismatch": ("r = row_t32.clone(); r[1] = 1 - r[1]; "
                                    "C.bsr_sdd(g32.bfloat16(), a32.bfloat16(), crow32, col32, ccol32, r, perm_t32, 32, "
                                    "True, False)"),
    "sdd_block_zero": "C.bsr_sdd(g, a, crow, col, ccol, row_t, perm_t, 0, True, False)",
    "enum_combo_huge": "C.transposable_enum(w, 2, 4, torch.full((6, 2), 99, dtype=torch.int32), pats)",
    "enum_pattern_huge": "p = pats.clone(); p[0, 0] = 1000; C.transposable_enum(w, 2, 4, combos, p)",
    "enum_no_patterns": "C.transposable_enum(w, 2, 4, combos, pats[:0])",
    "enum_combos_1d": "C.transposable_enum(w, 2, 4, combos.flatten(), pats)",
    "nm_m_huge": "C.nm_mask(w, 2, 1 << 40)",
    "nm_int_weight": "C.nm_mask(w.int(), 2, 4)",
    "exact_not_divisible": "C.transposable_exact(w[:6], 2, 4)",
    "approx_passes_negative": "C.transposable_approx(w, 2, 4, -5)",
}

_NATIVE_SCRIPT = textwrap.dedent("""
    import json, sys, torch
    from sparse import _C as C
    from sparse.ops import BlockLayout
    from sparse.masks import _enum
    torch.manual_seed(0)
    lay = BlockLayout.from_mask(torch.tensor([[1, 1, 0], [0, 1, 1]], dtype=torch.bool), 16)
    crow, col, row, ccol, row_t, perm_t = lay.tensors()
    data = torch.randn(lay.nnz, 16, 16)
    a, at, g = torch.randn(5, 48), torch.randn(5, 32), torch.randn(5, 32)
    lay32 = BlockLayout.from_mask(torch.tensor([[1, 1, 0], [0, 1, 1]], dtype=torch.bool), 32)
    crow32, col32, row32, ccol32, row_t32, perm_t32 = lay32.tensors()
    data32 = torch.randn(lay32.nnz, 32, 32)
    a32, g32 = torch.randn(40, 96), torch.randn(40, 64)
    E = torch.empty(0, dtype=torch.int32)
    w = torch.randn(8, 8)
    combos, pats = _enum.pattern_table(2, 4)
    cases = json.loads(sys.argv[1])
    for name, body in cases.items():
        try:
            exec(body)
            print(json.dumps([name, "no error"]), flush=True)
        except Exception as exc:
            print(json.dumps([name, type(exc).__name__ + ": " + str(exc).splitlines()[0]]), flush=True)
""")


@pytest.fixture(scope="module")
def native_results():
    proc = subprocess.run([sys.executable, "-c", _NATIVE_SCRIPT, json.dumps(_NATIVE_CASES)], capture_output=True,
                          text=True, timeout=600, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    out = dict(json.loads(line) for line in proc.stdout.splitlines() if line.startswith("["))
    return proc.returncode, out, proc.stderr[-2000:]


@requires_ext
@pytest.mark.parametrize("name", list(_NATIVE_CASES))
def test_native_entry_points_refuse_bad_arguments(native_results, name):
    rc, out, err = native_results
    assert name in out, f"the subprocess died before this case (rc={rc}): {err}"
    if name == "approx_passes_negative":
        assert out[name].startswith("RuntimeError") and "max_passes" in out[name]
        return
    assert out[name].startswith("RuntimeError"), out[name]
    assert rc == 0
