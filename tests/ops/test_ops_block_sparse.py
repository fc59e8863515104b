"""sparse.ops.block_sparse: dispatch (triton / csrc-cpu / torch), both CPU paths against the fp32 reference,
autograd of DDS, the torch.library ops (opcheck, fake kernels under torch.compile), argument errors."""
import importlib.util

import pytest
import torch

from sparse.ops import _bsr_cpu
from sparse.ops import block_sparse as bs
from sparse.ops import BlockLayout, last_backend, use_backend

TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
has_triton = importlib.util.find_spec("triton") is not None


def _close(out, ref, dtype):
    assert out.dtype == dtype and out.shape == ref.shape
    scale = max(ref.abs().max().item(), 1.0) if ref.numel() else 1.0
    err = (out.float() - ref).abs().max().item() if ref.numel() else 0.0
    assert err <= TOL[dtype] * scale, f"max error {err:.3g} > {TOL[dtype]:.1g} * {scale:.3g}"


def _case(r, c, block, p=0.4, seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(r, c, generator=g) < p
    mask[0, 0] = True
    if r > 2:
        mask[2] = False
    # One long row so the CPU path splits it into several chunks (partial sums).
    mask[-1] = True
    lay = BlockLayout.from_mask(mask, block)
    data = torch.randn(lay.nnz, block, block, generator=g)
    return lay, data


def _t(x, trans):
    return x.transpose(-1, -2) if trans else x


MODES = [(False, False), (False, True), (True, False), (True, True)]


def _why_not_native(dtype, block: int):
    return _bsr_cpu.native_usable(torch.zeros(1, dtype=dtype), BlockLayout.from_mask(torch.ones(1, 1, dtype=torch.bool), block))


def _native(dtype, block: int) -> bool:
    return _why_not_native(dtype, block) is None


def _kernel_families() -> list[str]:
    return _bsr_cpu.native_kernels()


needs_native = pytest.mark.skipif(not _native(torch.float32, 16), reason=str(_why_not_native(torch.float32, 16)))


@pytest.mark.parametrize("backend", ["csrc-cpu", "torch"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("trans_a, trans_b", MODES)
def test_cpu_backends_match_reference(backend, dtype, trans_a, trans_b):
    if backend == "csrc-cpu" and not _native(dtype, 16):
        pytest.skip(f"csrc-cpu backend cannot run {dtype} here: {_why_not_native(dtype, 16)}")
    lay, data = _case(5, 9, 16, seed=int(trans_a) + 2 * int(trans_b))
    d = data.to(dtype)
    s = lay.to_dense(d.float())
    with use_backend(backend):
        a = torch.randn(2, 6, s.shape[1] if trans_b else s.shape[0]).to(dtype)   # op(a): [2, 6, K]
        out = bs.dds(_t(a, trans_a).contiguous(), d, lay, trans_a=trans_a, trans_b=trans_b)
        assert last_backend("block_sparse.dds") == backend
        _close(out, a.float() @ _t(s, trans_b), dtype)

        b = torch.randn(2, s.shape[0] if trans_a else s.shape[1], 7).to(dtype)    # op(b): [2, K, 7]
        out = bs.dsd(d, lay, _t(b, trans_b).contiguous(), trans_a=trans_a, trans_b=trans_b)
        assert last_backend("block_sparse.dsd") == backend
        _close(out, _t(s, trans_a) @ b.float(), dtype)

        a2 = torch.randn(2, s.shape[0], 11).to(dtype)
        b2 = torch.randn(2, 11, s.shape[1]).to(dtype)
        out = bs.sdd(_t(a2, trans_a).contiguous(), _t(b2, trans_b).contiguous(), lay, trans_a=trans_a,
                     trans_b=trans_b)
        assert last_backend("block_sparse.sdd") == backend
        _close(out, lay.from_dense(a2.float() @ b2.float()), dtype)


def test_default_backend_is_native_where_it_runs_else_torch():
    lay, data = _case(2, 3, 16)
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        bs.dds(torch.randn(3, 48).to(dtype), data.to(dtype), lay, trans_b=True)
        assert last_backend("block_sparse.dds") == ("csrc-cpu" if _native(dtype, 16) else "torch")
    assert "float64" in _bsr_cpu.native_usable(torch.zeros(1, dtype=torch.float64))
    assert "not CPU" in (_bsr_cpu.native_usable(torch.zeros(1, device="meta")) or "not CPU")


def _module_case(block, rows, cols, tokens, dtype, seed):
    """A mask with an empty block row and an empty block column, x [tokens, in], dY [tokens, out]."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(rows, cols, generator=g) < 0.5
    mask[1] = False
    mask[:, 2] = False
    mask[0, 0] = mask[-1, 0] = mask[-1, 1] = True      # a run of adjacent blocks
    lay = BlockLayout.from_mask(mask, block)
    data = torch.randn(lay.nnz, block, block, generator=g).to(dtype)
    x = torch.randn(tokens, cols * block, generator=g).to(dtype)
    dy = torch.randn(tokens, rows * block, generator=g).to(dtype)
    return lay, data, x, dy


@needs_native
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("block, tokens", [(16, 1), (16, 33), (32, 70), (32, 300), (64, 37), (128, 5)])
@pytest.mark.parametrize("isa", ["", "amx", "avx512bf16", "brgemm"])
def test_native_kernels_every_mode_the_linear_layer_uses(dtype, block, tokens, isa, monkeypatch):
    """y = x W^T, dX = dY W (transpose metadata), dW = dY^T x (kept blocks) and dW^T's mode, forced csrc-cpu:
    token counts that are not multiples of the kernels' tiles (1, odd, > one tile), empty rows/columns.
    Every bf16 kernel family this CPU has (SPARSE_BSR_ISA) is run: AMX, AVX512-BF16, oneDNN brgemm."""
    if isa and isa not in _kernel_families():
        pytest.skip(f"no {isa} kernels on this CPU (has: {', '.join(_kernel_families())})")
    if isa:
        monkeypatch.setenv("SPARSE_BSR_ISA", isa)
    if not _native(dtype, block):
        pytest.skip(f"{dtype} with block {block} not native here: {_why_not_native(dtype, block)}")
    if isa and dtype == torch.float32 and isa != "brgemm":
        pytest.skip("fp32 always runs on brgemm")
    lay, data, x, dy = _module_case(block, 4, 5, tokens, dtype, seed=block + tokens)
    w = lay.to_dense(data.float())
    with use_backend("csrc-cpu"):
        _close(bs.dds(x, data, lay, trans_b=True), x.float() @ w.t(), dtype)
        _close(bs.dds(dy, data, lay), dy.float() @ w, dtype)
        _close(bs.sdd(dy, x, lay, trans_a=True), lay.from_dense(dy.float().t() @ x.float()), dtype)
        _close(bs.sdd(dy.t().contiguous(), x, lay), lay.from_dense(dy.float().t() @ x.float()), dtype)
        _close(bs.sdd(dy, x.t().contiguous(), lay, trans_a=True, trans_b=True),
               lay.from_dense(dy.float().t() @ x.float()), dtype)
        assert last_backend("block_sparse.sdd") == "csrc-cpu"


@pytest.mark.parametrize("backend", ["csrc-cpu", "torch"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows, cols", [(6, 3), (3, 6)])     # dY wider than x, and narrower
def test_sdd_rowsum_gives_blocks_and_bias_gradient(backend, dtype, rows, cols):
    if backend == "csrc-cpu" and not _native(dtype, 32):
        pytest.skip(f"{dtype} not native here")
    lay, data, x, dy = _module_case(32, rows, cols, 77, dtype, seed=rows)
    meta = (*lay.tensors(), lay.block, *lay.shape)
    with use_backend(backend):
        blocks, sums = torch.ops.sparse.bs_sdd_rowsum(dy, x, *meta, True, False)
        assert last_backend("block_sparse.sdd_rowsum") == backend
        _close(blocks, lay.from_dense(dy.float().t() @ x.float()), dtype)
        _close(sums, dy.float().sum(0), dtype)
        empty = BlockLayout.from_mask(torch.zeros(rows, cols, dtype=torch.bool), 32)
        meta = (*empty.tensors(), 32, *empty.shape)
        blocks, sums = torch.ops.sparse.bs_sdd_rowsum(dy, x, *meta, True, False)
        assert blocks.shape == (0, 32, 32)
        _close(sums, dy.float().sum(0), dtype)


@needs_native
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_native_kernels_empty_layout_and_no_tokens(dtype):
    if not _native(dtype, 32):
        pytest.skip(f"{dtype} not native here")
    lay = BlockLayout.from_mask(torch.zeros(2, 3, dtype=torch.bool), 32)
    data = torch.zeros(0, 32, 32, dtype=dtype)
    with use_backend("csrc-cpu"):
        zeros = torch.zeros(5, 64, dtype=dtype)
        assert torch.equal(bs.dds(torch.randn(5, 96).to(dtype), data, lay, trans_b=True), zeros)
        assert torch.equal(bs.dds(torch.randn(5, 64).to(dtype), data, lay), torch.zeros(5, 96, dtype=dtype))
        dw = bs.sdd(torch.randn(7, 64).to(dtype), torch.randn(7, 96).to(dtype), lay, trans_a=True)
        assert dw.shape == (0, 32, 32)
        lay, data, x, dy = _module_case(32, 2, 3, 0, dtype, seed=1)
        assert bs.dds(x, data, lay, trans_b=True).shape == (0, 64)
        assert torch.equal(bs.sdd(dy, x, lay, trans_a=True), torch.zeros_like(data))


@pytest.mark.parametrize("block", [16, 32, 64, 128])
def test_cpu_path_every_block_size_and_batched_data(block):
    lay, data = _case(2, 3, block, seed=block)
    per = torch.randn(3, lay.nnz, block, block)
    x = torch.randn(3, 4, lay.shape[1])
    _close(bs.dds(x, per, lay, trans_b=True), x @ lay.to_dense(per).transpose(-1, -2), torch.float32)
    _close(bs.dsd(per, lay, x, trans_b=True), lay.to_dense(per) @ x.transpose(-1, -2), torch.float32)


def test_empty_layout_and_empty_batch():
    lay = BlockLayout.from_mask(torch.zeros(2, 2, dtype=torch.bool), 16)
    data = torch.zeros(0, 16, 16)
    for backend in ("csrc-cpu", "torch"):
        with use_backend(backend):
            assert torch.equal(bs.dds(torch.randn(3, 32), data, lay, trans_b=True), torch.zeros(3, 32))
            assert torch.equal(bs.dsd(data, lay, torch.randn(32, 5)), torch.zeros(32, 5))
            assert bs.sdd(torch.randn(32, 4), torch.randn(4, 32), lay).shape == (0, 16, 16)
    lay, data = _case(2, 2, 16)
    assert bs.dds(torch.randn(0, 32), data, lay, trans_b=True).shape == (0, 32)


def test_dispatch_default_forced_and_env(monkeypatch):
    lay, data = _case(2, 2, 16)
    x = torch.randn(3, 32)
    ref = x @ lay.to_dense(data).t()
    monkeypatch.delenv("SPARSE_BACKEND", raising=False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    bs.dds(x, data, lay, trans_b=True)
    assert last_backend("block_sparse.dds") == ("csrc-cpu" if _native(torch.float32, 16) else "torch")
    with use_backend("torch"):
        _close(bs.dds(x, data, lay, trans_b=True), ref, torch.float32)
    assert last_backend("block_sparse.dds") == "torch"
    monkeypatch.setenv("SPARSE_BACKEND", "torch")
    bs.dds(x, data, lay, trans_b=True)
    assert last_backend("block_sparse.dds") == "torch"
    monkeypatch.delenv("SPARSE_BACKEND")
    with use_backend("triton"), pytest.raises(RuntimeError, match="forced backend 'triton' cannot run"):
        bs.dds(x, data, lay, trans_b=True)
    with use_backend("csrc-cuda"), pytest.raises(RuntimeError, match="forced backend 'csrc-cuda'"):
        bs.dds(x, data, lay, trans_b=True)


@pytest.mark.skipif(not has_triton, reason="triton not installed")
def test_triton_backend_in_interpreter_only_when_forced(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    lay, data = _case(2, 3, 16, seed=4)
    x = torch.randn(5, 48, requires_grad=True)
    w = data.clone().requires_grad_()
    bs.dds(x, w, lay, trans_b=True)
    assert last_backend("block_sparse.dds") != "triton"    # the interpreter is never picked on its own
    with use_backend("triton"):
        y = bs.dds(x, w, lay, trans_b=True)
        assert last_backend("block_sparse.dds") == "triton"
        y.backward(torch.ones_like(y))
        assert last_backend("block_sparse.sdd") == "triton"
    s = lay.to_dense(data)
    _close(y.detach(), x.detach() @ s.t(), torch.float32)
    _close(x.grad, torch.ones(5, 32) @ s, torch.float32)
    _close(w.grad, lay.from_dense(torch.ones(32, 5) @ x.detach()), torch.float32)


@pytest.mark.parametrize("trans_a, trans_b", MODES)
def test_dds_gradients_match_masked_dense(trans_a, trans_b):
    lay, data = _case(3, 4, 16, seed=11)
    s = lay.to_dense(data).requires_grad_()
    a = torch.randn(2, 5, s.shape[1] if trans_b else s.shape[0])
    a_in = _t(a, trans_a).contiguous().requires_grad_()
    w = data.clone().requires_grad_()
    out = bs.dds(a_in, w, lay, trans_a=trans_a, trans_b=trans_b)
    g = torch.randn_like(out)
    out.backward(g)
    a_ref = a_in.detach().clone().requires_grad_()
    (_t(a_ref, trans_a) @ _t(s, trans_b)).backward(g)
    _close(a_in.grad, a_ref.grad, torch.float32)
    _close(w.grad, lay.from_dense(s.grad), torch.float32)   # kept blocks only; batch summed


@pytest.mark.parametrize("backend", ["csrc-cpu", "torch"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_linear_with_fused_bias_and_gradients(backend, dtype):
    if backend == "csrc-cpu" and not _native(dtype, 32):
        pytest.skip(f"{dtype} not native here")
    lay, data, x, dy = _module_case(32, 3, 4, 45, dtype, seed=5)
    bias = torch.randn(lay.shape[0]).to(dtype)
    w = lay.to_dense(data.float()).requires_grad_()
    xr, br = x.float().clone().requires_grad_(), bias.float().clone().requires_grad_()
    ref = xr @ w.t() + br
    ref.backward(dy.float())
    x_in, d_in, b_in = (t.clone().requires_grad_() for t in (x, data, bias))
    with use_backend(backend):
        y = bs.linear(x_in, d_in, b_in, lay)
        assert last_backend("block_sparse.linear") == backend
        y.backward(dy)
    _close(y.detach(), ref.detach(), dtype)       # empty block row 1: outputs are the bias there
    _close(x_in.grad, xr.grad, dtype)
    _close(d_in.grad, lay.from_dense(w.grad), dtype)
    _close(b_in.grad, br.grad, dtype)
    with use_backend(backend):
        _close(bs.linear(x, data, None, lay), x.float() @ w.detach().t(), dtype)
        empty = BlockLayout.from_mask(torch.zeros(2, 3, dtype=torch.bool), 32)
        out = bs.linear(torch.randn(3, 96).to(dtype), torch.zeros(0, 32, 32, dtype=dtype), bias[:64], empty)
        assert torch.equal(out, bias[:64].expand(3, 64))


def test_linear_rejects_bad_arguments():
    lay, data, x, _ = _module_case(32, 3, 4, 5, torch.float32, seed=5)
    with pytest.raises(ValueError, match=r"bias: expected None or a 1-D torch.float32 tensor \[96\]"):
        bs.linear(x, data, torch.zeros(95), lay)
    with pytest.raises(ValueError, match="bias: expected None or a 1-D torch.float32 tensor"):
        bs.linear(x, data, torch.zeros(96, dtype=torch.bfloat16), lay)
    with pytest.raises(ValueError, match=r"x: expected a 2-D tensor \[T, in\], got shape \(1, 5, 128\)"):
        bs.linear(x[None], data, None, lay)


def test_opcheck_custom_ops():
    lay, data = _case(2, 3, 16, seed=2)
    meta = (*lay.tensors(), lay.block, *lay.shape)
    x = torch.randn(4, 48, requires_grad=True)
    w = data.clone().requires_grad_()
    torch.library.opcheck(torch.ops.sparse.bs_dds.default, (x, w, *meta, False, True))
    torch.library.opcheck(torch.ops.sparse.bs_dsd.default, (data, torch.randn(48, 5), *meta, False, False))
    torch.library.opcheck(torch.ops.sparse.bs_sdd.default, (torch.randn(6, 32), torch.randn(6, 48), *meta,
                                                            True, False))
    torch.library.opcheck(torch.ops.sparse.bs_linear.default, (x, w, torch.randn(32, requires_grad=True), *meta))
    torch.library.opcheck(torch.ops.sparse.bs_linear.default, (x, w, None, *meta))
    torch.library.opcheck(torch.ops.sparse.bs_sdd_rowsum.default, (torch.randn(6, 32), torch.randn(6, 48), *meta,
                                                                   True, False))


def test_torch_compile_traces_through_fake_kernels():
    lay, data = _case(2, 3, 16, seed=9)
    w = data.clone().requires_grad_()
    x = torch.randn(2, 3, 48)

    def f(x, w):
        return torch.relu(bs.dds(x, w, lay, trans_b=True)).sum()

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    loss = compiled(x, w)
    loss.backward()
    w2 = data.clone().requires_grad_()
    ref = f(x, w2)
    ref.backward()
    _close(loss.detach(), ref.detach(), torch.float32)
    _close(w.grad, w2.grad, torch.float32)


def test_public_functions_reject_bad_arguments():
    lay, data = _case(2, 2, 16)
    with pytest.raises(ValueError, match=r"a: expected \[..., M, K\] with K=32"):
        bs.dds(torch.randn(3, 16), data, lay, trans_b=True)
    with pytest.raises(ValueError, match="b_data: expected dtype torch.bfloat16"):
        bs.dds(torch.randn(3, 32, dtype=torch.bfloat16), data, lay, trans_b=True)
    with pytest.raises(ValueError, match="layout: expected a sparse.ops.BlockLayout"):
        bs.dsd(data, lay.mask(), torch.randn(32, 2))
    with pytest.raises(ValueError, match=r"a, b: expected op\(a\) @ op\(b\) of shape"):
        bs.sdd(torch.randn(16, 4), torch.randn(4, 32), lay)
    with pytest.raises(ValueError, match="a_data: expected a torch.Tensor, got list"):
        bs.dsd([1, 2], lay, torch.randn(32, 2))


@pytest.mark.skipif(not has_triton, reason="triton not installed")
def test_env_vars_force_triton_interpreter_in_a_fresh_process():
    import os
    import subprocess
    import sys

    code = (
        "import torch; from sparse.nn import BlockSparseLinear; from sparse.ops import last_backend\n"
        "lin = torch.nn.Linear(32, 48); mask = torch.tensor([[True, False], [True, True], [False, False]])\n"
        "m = BlockSparseLinear.from_dense(lin, mask); x = torch.randn(5, 32, requires_grad=True)\n"
        "m(x).sum().backward(); print(last_backend('block_sparse.dds'), last_backend('block_sparse.sdd'))\n"
    )
    env = dict(os.environ, SPARSE_BACKEND="triton", TRITON_INTERPRET="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True)
    assert out.stdout.split() == ["triton", "triton"]


@needs_native
def test_native_amx_and_brgemm_paths_interleave_with_atens_own_brgemm_users():
    """AMX tile state is per thread and ATen caches which brgemm config it loaded: our kernels (AMX tiles
    for B=32/64, cpublas::brgemm for B=16) and torch's CPU attention alternate in one thread."""
    blocks = [b for b in (16, 32, 16, 64) if _native(torch.bfloat16, b)]
    if not blocks:
        pytest.skip("bf16 not native here")
    q = torch.randn(1, 2, 40, 64).to(torch.bfloat16)
    with use_backend("csrc-cpu"):
        for block in blocks:
            lay, data, x, _ = _module_case(block, 3, 4, 50, torch.bfloat16, seed=block)
            _close(bs.dds(x, data, lay, trans_b=True), x.float() @ lay.to_dense(data.float()).t(), torch.bfloat16)
            att = torch.nn.functional.scaled_dot_product_attention(q, q, q)
            ref = torch.nn.functional.scaled_dot_product_attention(q.float(), q.float(), q.float())
            _close(att, ref, torch.bfloat16)
