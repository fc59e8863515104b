"""The Triton SDD / DSD / DDS kernels, run for real by triton's CPU interpreter (TRITON_INTERPRET=1).

Every kernel and transpose mode against an fp32 reference (masked dense matmul of the same inputs),
with per-dtype tolerances, on small shapes: every block size, every dtype, empty block rows and
columns, an empty layout, a single block, odd batches and per-sample block data. The launchers take
tensors and integers; the layouts here come from sparse.ops.BlockLayout, their one producer.
"""
import importlib.util
import sys

import pytest
import torch

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton not installed")

import triton_kernels as tk  # noqa: E402  (imports no triton: the kernels load on first launch)
from sparse.ops import BlockLayout  # noqa: E402

# Relative to the reference's largest magnitude: fp32 accumulation, output rounding of each dtype.
TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


@pytest.fixture(autouse=True)
def interpret(monkeypatch):
    # Triton reads the variable when the kernels are decorated: the kernel module is imported lazily,
    # on the first launch, so it is set before that.
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    mod = sys.modules.get("triton_kernels._block_sparse_kernels")
    if mod is not None and type(mod._dds_kernel).__name__ != "InterpretedFunction":
        pytest.skip("kernels were compiled for CUDA earlier in this process; run this file on its own")


def _close(out, ref, dtype):
    assert out.dtype == dtype and out.shape == ref.shape
    scale = max(ref.abs().max().item(), 1.0) if ref.numel() else 1.0
    err = (out.float() - ref).abs().max().item() if ref.numel() else 0.0
    assert err <= TOL[dtype] * scale, f"max error {err:.3g} > {TOL[dtype]:.1g} * {scale:.3g}"


def _case(r, c, block, p=0.5, seed=0, empty_row=True):
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(r, c, generator=g) < p
    if empty_row and r > 1:
        mask[1] = False            # an empty block row
    if c > 2:
        mask[:, 2] = False         # an empty block column
    mask[0, 0] = True
    lay = BlockLayout.from_mask(mask, block)
    data = torch.randn(lay.nnz, block, block, generator=g)
    return lay, data, lay.to_dense(data)


def _t(x, trans):
    return x.transpose(-1, -2) if trans else x


def _sparse(lay):
    return lay.shape, lay.block, lay.crow, lay.col, lay.ccol, lay.row_t, lay.perm_t


def dds(a, b_data, lay, trans_a=False, trans_b=False):
    return tk.dds(a, b_data, *_sparse(lay), trans_a=trans_a, trans_b=trans_b)


def dsd(a_data, lay, b, trans_a=False, trans_b=False):
    return tk.dsd(a_data, *_sparse(lay), b, trans_a=trans_a, trans_b=trans_b)


def sdd(a, b, lay, trans_a=False, trans_b=False):
    return tk.sdd(a, b, lay.shape, lay.block, lay.row, lay.col, trans_a=trans_a, trans_b=trans_b)


@pytest.mark.parametrize("block", [16, 32, 64, 128])
@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
def test_dds_every_block_and_mode(block, trans_a, trans_b):
    lay, data, s = _case(2, 3, block, seed=block)
    k = lay.shape[1] if trans_b else lay.shape[0]
    a = torch.randn(2, 7, k)                    # op(a) is [2, 7, K]
    a_in = _t(a, trans_a).contiguous()
    out = dds(a_in, data, lay, trans_a=trans_a, trans_b=trans_b)
    _close(out, a @ _t(s, trans_b), torch.float32)


@pytest.mark.parametrize("block", [16, 32, 64, 128])
@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
def test_dsd_every_block_and_mode(block, trans_a, trans_b):
    lay, data, s = _case(3, 2, block, seed=block + 1)
    k = lay.shape[0] if trans_a else lay.shape[1]
    b = torch.randn(3, k, 9)                    # op(b) is [3, K, 9]; N=9 is not a tile multiple
    out = dsd(data, lay, _t(b, trans_b).contiguous(), trans_a=trans_a, trans_b=trans_b)
    _close(out, _t(s, trans_a) @ b, torch.float32)


@pytest.mark.parametrize("block", [16, 32, 64, 128])
@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
def test_sdd_every_block_and_mode(block, trans_a, trans_b):
    lay, _, _ = _case(2, 3, block, seed=block + 2)
    a = torch.randn(3, lay.shape[0], 37)        # K=37: a partial K tile
    b = torch.randn(3, 37, lay.shape[1])
    out = sdd(_t(a, trans_a).contiguous(), _t(b, trans_b).contiguous(), lay, trans_a=trans_a, trans_b=trans_b)
    _close(out, lay.from_dense(a @ b), torch.float32)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("block", [16, 32])
def test_low_precision_inputs_accumulate_in_fp32(dtype, block):
    lay, data, _ = _case(3, 4, block, seed=7)
    x = torch.randn(2, 5, lay.shape[1]).to(dtype)
    g = torch.randn(2, 5, lay.shape[0]).to(dtype)
    d = data.to(dtype)
    s = lay.to_dense(d.float())
    xf, gf = x.float(), g.float()
    _close(dds(x, d, lay, trans_b=True), xf @ s.t(), dtype)                       # forward
    _close(dds(g, d, lay), gf @ s, dtype)                                         # dX
    _close(dsd(d, lay, x, trans_b=True), s @ xf.transpose(-1, -2), dtype)
    _close(dsd(d, lay, g, trans_a=True, trans_b=True), s.t() @ gf.transpose(-1, -2), dtype)
    _close(sdd(g[0], x[0], lay, trans_a=True), lay.from_dense(gf[0].t() @ xf[0]), dtype)  # dW


def test_empty_layout_gives_zeros():
    lay = BlockLayout.from_mask(torch.zeros(2, 3, dtype=torch.bool), 16)
    data = torch.zeros(0, 16, 16)
    assert torch.equal(dds(torch.randn(4, 32), data, lay), torch.zeros(4, 48))
    assert torch.equal(dsd(data, lay, torch.randn(48, 5)), torch.zeros(32, 5))
    assert sdd(torch.randn(32, 8), torch.randn(8, 48), lay).shape == (0, 16, 16)


def test_single_block():
    lay = BlockLayout.from_mask(torch.tensor([[True]]), 32)
    data = torch.randn(1, 32, 32)
    x = torch.randn(3, 32)
    _close(dds(x, data, lay, trans_b=True), x @ data[0].t(), torch.float32)
    _close(dsd(data, lay, x.t()), data[0] @ x.t(), torch.float32)
    _close(sdd(x.t(), x, lay), (x.t() @ x)[None], torch.float32)


def test_odd_batch_and_per_sample_blocks():
    lay, _, _ = _case(2, 2, 16, seed=3)
    x = torch.randn(3, 1, 5, 32)                             # leading dims (3, 1)
    per = torch.randn(3, 1, lay.nnz, 16, 16)                 # one weight per sample
    ref = x @ lay.to_dense(per).transpose(-1, -2)
    _close(dds(x, per, lay, trans_b=True), ref, torch.float32)
    ref = lay.to_dense(per) @ x.transpose(-1, -2)
    _close(dsd(per, lay, x, trans_b=True), ref, torch.float32)
    out = sdd(x.transpose(-1, -2), x, lay)                # [3, 1, nnz, 16, 16]
    _close(out, lay.from_dense(x.transpose(-1, -2) @ x), torch.float32)
    _close(dds(x[:0], per[:0], lay, trans_b=True), torch.zeros(0, 1, 5, 32), torch.float32)


def test_non_contiguous_dense_operands():
    lay, data, s = _case(2, 2, 16, seed=5)
    big = torch.randn(6, 64)
    a = big[::2, ::2]                                        # strided [3, 32]
    _close(dds(a, data, lay, trans_b=True), a @ s.t(), torch.float32)


def test_launchers_reject_what_would_launch_out_of_bounds(monkeypatch):
    lay, data, _ = _case(2, 2, 16)
    x = torch.randn(4, 32)
    idx = (lay.crow, lay.col, lay.ccol, lay.row_t, lay.perm_t)
    with pytest.raises(ValueError, match=r"a: expected inner dim K=32"):
        tk.dds(torch.randn(4, 31), data, lay.shape, 16, *idx, trans_b=True)
    with pytest.raises(ValueError, match="b_data: expected dtype torch.float32"):
        tk.dds(x, data.half(), lay.shape, 16, *idx, trans_b=True)
    with pytest.raises(ValueError, match=r"b_data: expected \[..., nnz=\d+, 16, 16\]"):
        tk.dds(x, data[:, :8], lay.shape, 16, *idx, trans_b=True)
    with pytest.raises(ValueError, match=r"crow: expected .* of 2 entries"):
        tk.dds(x, data, lay.shape, 32, *idx, trans_b=True)           # block disagrees with the layout
    with pytest.raises(ValueError, match="a: expected dtype float32, float16 or bfloat16, got torch.float64"):
        tk.dds(x.double(), data, lay.shape, 16, *idx, trans_b=True)
    with pytest.raises(ValueError, match=r"b_data: expected leading dims \(\) or \(2,\)"):
        tk.dds(torch.randn(2, 4, 32), torch.randn(3, lay.nnz, 16, 16), lay.shape, 16, *idx, trans_b=True)
    with pytest.raises(ValueError, match="crow: expected a contiguous 1-D torch.int32 tensor"):
        tk.dds(x, data, lay.shape, 16, lay.crow.long(), *idx[1:], trans_b=True)
    with pytest.raises(ValueError, match="crow: expected a contiguous 1-D torch.int32 tensor of 3 entries"):
        tk.dds(x, data, lay.shape, 16, lay.crow[:2], *idx[1:], trans_b=True)   # a layout of another shape
    with pytest.raises(ValueError, match="block: expected one of"):
        tk.sdd(torch.randn(32, 8), torch.randn(8, 32), lay.shape, 24, lay.row, lay.col)
    with pytest.raises(ValueError, match=r"a, b: expected op\(a\) @ op\(b\) of shape \(32, 32\)"):
        tk.sdd(torch.randn(32, 8), torch.randn(8, 48), lay.shape, 16, lay.row, lay.col)
    with pytest.raises(ValueError, match="a, b: expected the same leading dims"):
        tk.sdd(torch.randn(2, 32, 8), torch.randn(3, 8, 32), lay.shape, 16, lay.row, lay.col)
    with pytest.raises(ValueError, match=r"b: expected inner dim K=32"):
        tk.dsd(data, lay.shape, 16, *idx, torch.randn(16, 4))
    monkeypatch.delenv("TRITON_INTERPRET")
    with pytest.raises(ValueError, match="a: expected a CUDA tensor"):
        tk.dds(x, data, lay.shape, 16, *idx, trans_b=True)


def test_triton_kernels_is_a_leaf():
    """No module of triton_kernels imports the library that calls it."""
    import ast
    import pathlib

    root = pathlib.Path(tk.__file__).parent
    for path in root.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n == "sparse" or n.startswith("sparse.") for n in names), (path.name, names)


def test_import_does_not_import_triton():
    import subprocess

    # sparse loads triton_kernels only when a call runs on it; triton_kernels loads triton only to launch.
    code = ("import sys, sparse, sparse.nn, sparse.ops.block_sparse; "
            "from sparse.nn import BlockSparseLinear; "
            "assert not {'triton', 'triton_kernels'} & set(sys.modules), sorted(m for m in sys.modules if 'triton' in m); "
            "import triton_kernels; "
            "assert 'triton' not in sys.modules, sorted(m for m in sys.modules if 'triton' in m)")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_autotune_configs_come_from_functions():
    from triton_kernels import block_sparse as bs

    for kind, arg in (("dsd", "BLOCK_N"), ("dds", "BLOCK_M"), ("sdd", "BLOCK_K")):
        configs = bs.cuda_configs(kind)
        assert len(configs) >= 6 and all(arg in c.kwargs for c in configs)
        assert arg in bs.interpreter_config(kind)
    with pytest.raises(ValueError, match="kind: expected one of"):
        bs.cuda_configs("spmm")
