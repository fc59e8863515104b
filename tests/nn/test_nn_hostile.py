"""Hostile inputs to sparse.nn.BlockSparseLinear: edited state dicts (also from .safetensors files) are
refused at load with a ValueError naming the buffer, bad constructor / from_dense / forward arguments get
ValueErrors naming the argument, odd but valid inputs give the right result, and an index buffer edited
behind the validation's back never makes a kernel touch memory it does not own."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn as nn

from sparse.nn import BlockSparseLinear
from sparse.ops import use_backend
from testkit import has_ext

BACKENDS = ["torch"] + (["csrc-cpu"] if has_ext() else [])
MASK = torch.tensor([[1, 0, 1, 1], [0, 1, 1, 0], [1, 1, 0, 0], [0, 0, 0, 1]], dtype=torch.bool)


def _module(block=16, seed=0, bias=True):
    torch.manual_seed(seed)
    return BlockSparseLinear.from_dense(nn.Linear(4 * block, 4 * block, bias=bias), MASK)


def _i32(*v):
    return torch.tensor(v, dtype=torch.int32)


# ----------------------------------------------------------------------------- edited state dicts
# The layout of MASK: crow [0 3 5 7 8], col [0 2 3 1 2 0 1 3], ccol [0 2 4 6 8], row_t [0 2 1 2 0 1 0 3],
# perm_t [0 5 3 6 1 4 2 7].
def _edits():
    return {
        "col_huge": ("col", lambda t: t.index_fill_(0, torch.tensor([0]), 100000), r"col: expected block columns"),
        "col_negative": ("col", lambda t: t.index_fill_(0, torch.tensor([3]), -1), r"col: expected block columns"),
        "col_duplicate": ("col", lambda t: t.index_fill_(0, torch.tensor([1]), 0), "duplicates"),
        "col_unsorted": ("col", lambda _: _i32(2, 0, 3, 1, 2, 0, 1, 3), "strictly ascending"),
        "crow_not_monotone": ("crow", lambda _: _i32(0, 5, 3, 7, 8), "crow: expected non-decreasing"),
        "crow_not_from_zero": ("crow", lambda _: _i32(1, 3, 5, 7, 8), "crow: expected non-decreasing pointers from 0"),
        "crow_end_not_nnz": ("crow", lambda _: _i32(0, 3, 5, 7, 7), "crow: expected non-decreasing pointers from 0"),
        "crow_int64": ("crow", lambda t: t.long(), "crow: expected a 1-D torch.int32 tensor, got torch.int64"),
        "crow_float": ("crow", lambda t: t.float(), "crow: expected a 1-D torch.int32 tensor"),
        "crow_wrong_shape": ("crow", lambda _: _i32(0, 3, 5, 8), "crow: expected 5 entries"),
        "crow_2d": ("crow", lambda t: t[None], "crow: expected a 1-D torch.int32 tensor"),
        "crow_list": ("crow", lambda t: t.tolist(), "crow: expected a 1-D torch.int32 tensor, got list"),
        "row_inconsistent": ("row", lambda _: _i32(0, 0, 0, 1, 1, 2, 3, 3), "row: expected the block row"),
        "ccol_bad": ("ccol", lambda _: _i32(0, 3, 4, 6, 8), "ccol|transpose metadata|row_t"),
        "row_t_huge": ("row_t", lambda t: t.index_fill_(0, torch.tensor([2]), 99), r"row_t: expected block rows"),
        "perm_t_not_permutation": ("perm_t", lambda t: t.index_fill_(0, torch.tensor([1]), 0),
                                   "perm_t: expected a permutation"),
        "perm_t_out_of_range": ("perm_t", lambda t: t.index_fill_(0, torch.tensor([1]), 8),
                                "perm_t: expected a permutation"),
        "perm_t_swapped": ("perm_t", lambda _: _i32(5, 0, 3, 6, 1, 4, 2, 7), "transpose metadata"),
        "weight_data_shape": ("weight_data", lambda t: t[:7], r"weight_data: expected block data of shape \[8, 16, 16\]"),
        "weight_data_2d": ("weight_data", lambda t: t.reshape(8, 256), r"weight_data: expected block data"),
        "weight_data_int": ("weight_data", lambda t: t.int(), "weight_data: expected a floating-point tensor"),
    }


@pytest.mark.parametrize("case", list(_edits()))
def test_edited_state_dict_is_refused_at_load(case):
    key, edit, match = _edits()[case]
    src = _module()
    sd = {k: v.clone() for k, v in src.state_dict().items()}
    sd[key] = edit(sd[key])
    dst = _module(seed=1)
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    with pytest.raises(ValueError, match=match):
        dst.load_state_dict(sd)
    # all or nothing: a refused state dict leaves the module as it was
    for k, v in dst.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_error_names_the_buffer_with_its_prefix():
    model = nn.Sequential(nn.Identity(), _module())
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    sd["1.col"][0] = 100000
    with pytest.raises(ValueError, match=r"1\.col: expected block columns in \[0, 4\)"):
        model.load_state_dict(sd)


def test_edited_safetensors_file_is_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    sd = {k: v.clone().contiguous() for k, v in _module().state_dict().items()}
    sd["col"][0] = 100000
    path = tmp_path / "edited.safetensors"
    save_file(sd, str(path))
    with pytest.raises(ValueError, match="col: expected block columns"):
        _module().load_state_dict(load_file(str(path)))


def test_valid_state_dicts_still_load():
    src, dst = _module(seed=2), _module(seed=3)
    dst.load_state_dict(src.state_dict())
    x = torch.randn(3, 64)
    assert torch.equal(dst(x), src(x))
    # a different layout with the same number of blocks loads too, and the module follows it
    other = BlockSparseLinear.from_dense(nn.Linear(64, 64), MASK.flip(0))
    dst.load_state_dict(other.state_dict())
    assert torch.equal(dst.block_mask, MASK.flip(0))
    assert torch.equal(dst(x), other(x))
    # assign=True replaces the tensors; they are validated the same way
    sd = {k: v.clone() for k, v in src.state_dict().items()}
    dst.load_state_dict(sd, assign=True)
    assert torch.equal(dst(x), src(x))
    sd["perm_t"][0] = 3
    with pytest.raises(ValueError, match="perm_t"):
        _module().load_state_dict(sd, assign=True)


def test_partial_state_dict_is_checked_against_the_buffers_it_leaves():
    src = _module()
    sd = {"col": src.col.clone()}
    sd["col"][0] = 3  # row 0 becomes (3, 2, 3): unsorted and duplicated against the module's crow/ccol
    with pytest.raises(ValueError, match="col"):
        _module().load_state_dict(sd, strict=False)
    ok = {"weight_data": src.weight_data.detach().clone()}
    dst = _module(seed=4)
    dst.load_state_dict(ok, strict=False)
    assert torch.equal(dst.weight_data, src.weight_data)


@pytest.mark.parametrize("backend", BACKENDS)
def test_buffer_edited_in_place_after_construction_is_caught_at_forward(backend):
    mod = _module()
    x = torch.randn(3, 64)
    with use_backend(backend):
        mod(x)
        mod.col[0] = 100000
        with pytest.raises(ValueError, match=r"layout.col: expected block columns in \[0, 4\)"):
            mod(x)


def test_buffer_edit_that_bypasses_the_version_counter_never_crashes():
    # `.data` writes are invisible to the validation cache: the kernels bound every index themselves.
    code = textwrap.dedent("""
        import torch, torch.nn as nn
        from sparse.nn import BlockSparseLinear
        from sparse.ops import use_backend
        torch.manual_seed(0)
        mask = torch.tensor([[1, 0, 1, 1], [0, 1, 1, 0], [1, 1, 0, 0], [0, 0, 0, 1]], dtype=torch.bool)
        for dtype in (torch.float32, torch.bfloat16):
            mod = BlockSparseLinear.from_dense(nn.Linear(128, 128), mask).to(dtype)
            x = torch.randn(8, 128, dtype=dtype, requires_grad=True)
            mod(x).sum().backward()
            mod.col.data[0] = 100000
            mod.perm_t.data[1] = 1 << 30
            for backend in ("csrc-cpu", "torch"):
                try:
                    with use_backend(backend):
                        mod(x).sum().backward()
                    print("NO ERROR", backend, dtype)
                except (RuntimeError, IndexError, ValueError) as exc:
                    print("refused", backend, dtype, type(exc).__name__)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [l for l in proc.stdout.splitlines() if l.startswith(("refused", "NO ERROR"))]
    expected = 4 if has_ext() else 2
    assert len(lines) == expected and all(l.startswith("refused") for l in lines), proc.stdout


# ----------------------------------------------------------------------------- constructor, from_dense, forward
@pytest.mark.parametrize("args,match", [
    ((64.0, 64, MASK), "in_features: expected a positive int, got float"),
    ((64, True, MASK), "out_features: expected a positive int, got bool"),
    ((-64, 64, MASK), "in_features: expected a positive int"),
    ((0, 64, MASK), "in_features: expected a positive int"),
    ((64, 64, MASK.tolist()), "block_mask: expected a 2-D torch.bool tensor .*got list"),
    ((64, 64, MASK.numpy()), "block_mask: expected a 2-D torch.bool tensor .*got ndarray"),
    ((64, 64, MASK.to("meta")), "block_mask: expected a tensor with data"),
    ((64, 64, MASK.float()), "block_mask: expected a 2-D torch.bool"),
    ((64, 64, MASK[None]), "block_mask: expected a 2-D torch.bool"),
    ((64, 64, torch.ones(0, 4, dtype=torch.bool)), r"block_mask: expected shape \[out/B, in/B\]"),
])
def test_constructor_bad_arguments(args, match):
    with pytest.raises(ValueError, match=match):
        BlockSparseLinear(*args)


def test_constructor_bad_keyword_arguments():
    with pytest.raises(ValueError, match="dtype: expected a floating-point dtype"):
        BlockSparseLinear(64, 64, MASK, dtype=torch.int64)
    with pytest.raises(ValueError, match="bias: expected True or False"):
        BlockSparseLinear(64, 64, MASK, bias="no")


@pytest.mark.parametrize("linear,mask,match", [
    (nn.Linear(64, 64), MASK.tolist(), "block_mask: expected a 2-D torch.bool tensor .*got list"),
    (nn.Linear(64, 64), None, "block_mask: expected a 2-D torch.bool tensor .*got NoneType"),
    (nn.Linear(64, 64, device="meta"), MASK, "linear: expected a Linear with data"),
    (nn.Linear(64, 64, dtype=torch.float64), MASK, "linear: expected .*float32, float16 or bfloat16"),
    (None, MASK, "linear: expected a torch.nn.Linear, got NoneType"),
])
def test_from_dense_bad_arguments(linear, mask, match):
    with pytest.raises(ValueError, match=match):
        BlockSparseLinear.from_dense(linear, mask)


def _forward_bad():
    return {
        "list": ([[0.0] * 64], r"x: expected a tensor \[..., in_features=64\], got list"),
        "numpy": (np.zeros((2, 64), dtype=np.float32), r"x: expected a tensor .*got ndarray"),
        "none": (None, r"x: expected a tensor .*got NoneType"),
        "int": (3, r"x: expected a tensor .*got int"),
        "0d": (torch.tensor(1.0), r"x: expected a tensor \[..., in_features=64\], got \(\)"),
        "meta": (torch.randn(2, 64, device="meta"), "x: expected a tensor on the layer's device cpu, got meta"),
        "fp64": (torch.randn(2, 64, dtype=torch.float64), "x: expected dtype torch.float32"),
        "int64": (torch.ones(2, 64, dtype=torch.int64), "x: expected dtype torch.float32"),
        "complex": (torch.randn(2, 64, dtype=torch.complex64), "x: expected dtype torch.float32"),
        "wrong_last_dim": (torch.randn(2, 65), r"x: expected a tensor \[..., in_features=64\], got \(2, 65\)"),
    }


@pytest.mark.parametrize("case", list(_forward_bad()))
def test_forward_bad_inputs(case):
    x, match = _forward_bad()[case]
    with pytest.raises(ValueError, match=match):
        _module()(x)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["empty_batch", "transposed", "expanded", "3d", "all_pruned", "no_bias"])
def test_forward_odd_but_valid_inputs_give_the_right_result(backend, kind):
    mod = _module(bias=kind != "no_bias")
    if kind == "all_pruned":
        mod = BlockSparseLinear.from_dense(nn.Linear(64, 64), torch.zeros(4, 4, dtype=torch.bool))
    base = torch.randn(64, 6, generator=torch.Generator().manual_seed(5))
    x = {"empty_batch": torch.randn(0, 64), "transposed": base.t(), "expanded": base[:, :1].t().expand(6, 64),
         "3d": base.t().reshape(2, 3, 64), "all_pruned": base.t(), "no_bias": base.t()}[kind]
    x = x.clone().requires_grad_() if kind != "expanded" else x.requires_grad_()
    with use_backend(backend):
        y = mod(x)
        y.sum().backward()
    ref_lin = mod.to_dense()
    x2 = x.detach().clone().requires_grad_()
    ref = ref_lin(x2)
    ref.sum().backward()
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-5, atol=1e-5)
    if kind == "all_pruned":
        assert mod.weight_data.shape == (0, 16, 16)
        torch.testing.assert_close(y, mod.bias.expand_as(y))
