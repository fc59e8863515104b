"""Block-sparse matmuls (SDD, DSD, DDS) as dispatched, autograd-aware ``torch.library`` ops.

Layering: :func:`dds` / :func:`dsd` / :func:`sdd` / :func:`linear` (public, take a
:class:`~sparse.ops.layout.BlockLayout`, check their arguments) -> ``torch.ops.sparse.bs_*`` custom ops
(autograd for ``dds`` and ``linear``; fake kernels so ``torch.compile`` traces through them) ->
:class:`~sparse.ops.dispatch.Op` dispatch -> backends, tried in this order:

* ``triton``: the kernels of :mod:`triton_kernels` (:mod:`sparse.ops._bsr_triton`): CUDA tensors; on CPU
  only with ``TRITON_INTERPRET=1`` *and* the backend forced, since the interpreter is for tests.
* ``csrc-cpu``: the C++ kernels of ``sparse._C`` (:mod:`sparse.ops._bsr_cpu`): CPU tensors, extension
  built, a dtype the CPU runs natively.
* ``torch``: pure torch, batched gather + one GEMM per row group (:mod:`sparse.ops._bsr_cpu`), any
  device; what runs when the extension or a native dtype is missing.

Eager calls of :func:`linear` (what ``BlockSparseLinear`` runs) skip the custom-op layers through
``_EagerLinear``, a plain autograd Function over the same dispatch ops (same backends and kernels, ~0.3 ms
less per layer fwd+bwd); under ``torch.compile`` and for double backward the custom ops run.

Semantics (``op(t)`` = t or its last-two-dims transpose; S has ``layout.shape``; data
``[nnz, B, B]`` or ``[..., nnz, B, B]``; fp32/fp16/bf16, output in the input dtype):

* ``sdd(a, b, layout)``: kept blocks of ``op(a) @ op(b)`` -> ``[..., nnz, B, B]``
* ``dsd(a_data, layout, b)``: ``op(S) @ op(b)`` -> ``[..., M, N]``
* ``dds(a, b_data, layout)``: ``op(a) @ op(S)`` -> ``[..., M, N]``
"""
from __future__ import annotations

import torch

from . import _bsr_cpu, _bsr_triton
from .dispatch import Op, forced_backend
from .layout import BlockLayout, check_dds, check_dsd, check_sdd, ensure_validated

__all__ = ["BlockLayout", "dds", "dsd", "sdd", "linear", "dds_op", "dsd_op", "sdd_op", "linear_op"]

dds_op = Op("block_sparse.dds")
linear_op = Op("block_sparse.linear")
sdd_rowsum_op = Op("block_sparse.sdd_rowsum")
dsd_op = Op("block_sparse.dsd")
sdd_op = Op("block_sparse.sdd")


# ---------------------------------------------------------------------------- backends
def _triton_usable(*args, **kwargs) -> str | None:
    """``_bsr_triton.usable`` behind a check that costs nothing: CPU tensors with the backend not forced
    by name never run Triton, and the package probe it would do (two ``find_spec`` file-system walks)
    cost ~0.15 ms per op call, half a small layer's fwd+bwd."""
    dev = next((a.device for a in args if isinstance(a, torch.Tensor)), None)
    if dev is not None and dev.type == "cpu" and forced_backend() != "triton":
        return ("tensors on cpu: the Triton kernels need CUDA (on CPU only under TRITON_INTERPRET=1 with the "
                "triton backend forced)")
    return _bsr_triton.usable(*args, **kwargs)


# Priority order: triton, csrc-cpu, torch (the dispatcher takes the first usable one).
dds_op.register("triton", _triton_usable)(_bsr_triton.dds)
dsd_op.register("triton", _triton_usable)(_bsr_triton.dsd)
sdd_op.register("triton", _triton_usable)(_bsr_triton.sdd)
dds_op.register("csrc-cpu", _bsr_cpu.native_usable)(_bsr_cpu.native_dds)
dsd_op.register("csrc-cpu", _bsr_cpu.native_usable)(_bsr_cpu.native_dsd)
sdd_op.register("csrc-cpu", _bsr_cpu.native_usable)(_bsr_cpu.native_sdd)
dds_op.register("torch")(_bsr_cpu.dds)
dsd_op.register("torch")(_bsr_cpu.dsd)
sdd_op.register("torch")(_bsr_cpu.sdd)


def _linear_any(x, w_data, bias, layout):
    """``x @ W^T (+ bias)`` through the dds dispatch (which honours the same forced backend)."""
    y = dds_op(x, w_data, layout, False, True)
    return y if bias is None else y + bias


def _sdd_rowsum_any(a, b, layout, trans_a=False, trans_b=False):
    """``(sdd(a, b), op(a).sum(-1))`` through the sdd dispatch plus a separate sum."""
    return sdd_op(a, b, layout, trans_a, trans_b), (a.transpose(-1, -2) if trans_a else a).sum(-1)


linear_op.register("triton", _triton_usable)(_linear_any)
linear_op.register("csrc-cpu", _bsr_cpu.native_usable)(_bsr_cpu.native_linear)   # bias fused in the kernel
linear_op.register("torch")(_linear_any)
sdd_rowsum_op.register("triton", _triton_usable)(_sdd_rowsum_any)
sdd_rowsum_op.register("csrc-cpu", _bsr_cpu.native_usable)(_bsr_cpu.native_sdd_rowsum)   # sums fused in the packing
sdd_rowsum_op.register("torch")(_sdd_rowsum_any)


# ---------------------------------------------------------------------------- torch.library ops
# The layout travels as its index tensors plus (block, rows, cols): custom ops take only tensors and
# scalars. The ops are callable directly (torch.ops.sparse.bs_*) and are what runs under torch.compile,
# so each one checks its arguments again and validates the layout's values (once per layout state, see
# sparse.ops.layout) before a backend runs; the public functions check first for errors at trace time.
def _layout(block, rows, cols, crow, col, row, ccol, row_t, perm_t) -> BlockLayout:
    lay = BlockLayout.from_tensors(block, (rows, cols), (crow, col, row, ccol, row_t, perm_t), validate=False)
    return ensure_validated(lay)


def _check_linear(x, w_data, bias, layout) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 2:
        got = f"shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x: expected a 2-D tensor [T, in], got {got}")
    check_dds(x, w_data, layout, False, True, names=("x", "w_data"))
    if bias is not None:
        if (not isinstance(bias, torch.Tensor) or bias.dim() != 1 or bias.shape[0] != layout.shape[0]
                or bias.dtype != x.dtype or bias.device != x.device):
            got = (f"{bias.dtype} tensor of shape {tuple(bias.shape)} on {bias.device}"
                   if isinstance(bias, torch.Tensor) else type(bias).__name__)
            raise ValueError(f"bias: expected None or a 1-D {x.dtype} tensor [{layout.shape[0]}] on {x.device}, "
                             f"got {got}")


@torch.library.custom_op("sparse::bs_dds", mutates_args=())
def _bs_dds(a: torch.Tensor, b_data: torch.Tensor, crow: torch.Tensor, col: torch.Tensor, row: torch.Tensor,
            ccol: torch.Tensor, row_t: torch.Tensor, perm_t: torch.Tensor, block: int, rows: int, cols: int,
            trans_a: bool, trans_b: bool) -> torch.Tensor:
    lay = _layout(block, rows, cols, crow, col, row, ccol, row_t, perm_t)
    check_dds(a, b_data, lay, trans_a, trans_b)
    return dds_op(a, b_data, lay, trans_a, trans_b)


@torch.library.custom_op("sparse::bs_dsd", mutates_args=())
def _bs_dsd(a_data: torch.Tensor, b: torch.Tensor, crow: torch.Tensor, col: torch.Tensor, row: torch.Tensor,
            ccol: torch.Tensor, row_t: torch.Tensor, perm_t: torch.Tensor, block: int, rows: int, cols: int,
            trans_a: bool, trans_b: bool) -> torch.Tensor:
    lay = _layout(block, rows, cols, crow, col, row, ccol, row_t, perm_t)
    check_dsd(a_data, lay, b, trans_a, trans_b)
    return dsd_op(a_data, lay, b, trans_a, trans_b)


@torch.library.custom_op("sparse::bs_sdd", mutates_args=())
def _bs_sdd(a: torch.Tensor, b: torch.Tensor, crow: torch.Tensor, col: torch.Tensor, row: torch.Tensor,
            ccol: torch.Tensor, row_t: torch.Tensor, perm_t: torch.Tensor, block: int, rows: int, cols: int,
            trans_a: bool, trans_b: bool) -> torch.Tensor:
    lay = _layout(block, rows, cols, crow, col, row, ccol, row_t, perm_t)
    check_sdd(a, b, lay, trans_a, trans_b)
    return sdd_op(a, b, lay, trans_a, trans_b)


@torch.library.custom_op("sparse::bs_linear", mutates_args=())
def _bs_linear(x: torch.Tensor, w_data: torch.Tensor, bias: torch.Tensor | None, crow: torch.Tensor,
               col: torch.Tensor, row: torch.Tensor, ccol: torch.Tensor, row_t: torch.Tensor, perm_t: torch.Tensor,
               block: int, rows: int, cols: int) -> torch.Tensor:
    lay = _layout(block, rows, cols, crow, col, row, ccol, row_t, perm_t)
    _check_linear(x, w_data, bias, lay)
    return linear_op(x, w_data, bias, lay)


@torch.library.custom_op("sparse::bs_sdd_rowsum", mutates_args=())
def _bs_sdd_rowsum(a: torch.Tensor, b: torch.Tensor, crow: torch.Tensor, col: torch.Tensor, row: torch.Tensor,
                   ccol: torch.Tensor, row_t: torch.Tensor, perm_t: torch.Tensor, block: int, rows: int, cols: int,
                   trans_a: bool, trans_b: bool) -> tuple[torch.Tensor, torch.Tensor]:
    lay = _layout(block, rows, cols, crow, col, row, ccol, row_t, perm_t)
    check_sdd(a, b, lay, trans_a, trans_b)
    if a.dim() != 2:
        raise ValueError(f"a: expected a 2-D tensor, got shape {tuple(a.shape)}")
    return sdd_rowsum_op(a, b, lay, trans_a, trans_b)


@_bs_sdd_rowsum.register_fake
def _(a, b, crow, col, row, ccol, row_t, perm_t, block, rows, cols, trans_a, trans_b):
    return a.new_empty(col.shape[0], block, block), a.new_empty(rows)


@_bs_linear.register_fake
def _(x, w_data, bias, crow, col, row, ccol, row_t, perm_t, block, rows, cols):
    return x.new_empty(x.shape[0], rows)


@_bs_dds.register_fake
def _(a, b_data, crow, col, row, ccol, row_t, perm_t, block, rows, cols, trans_a, trans_b):
    m = a.shape[-1] if trans_a else a.shape[-2]
    n = rows if trans_b else cols
    return a.new_empty(*a.shape[:-2], m, n)


@_bs_dsd.register_fake
def _(a_data, b, crow, col, row, ccol, row_t, perm_t, block, rows, cols, trans_a, trans_b):
    m = cols if trans_a else rows
    n = b.shape[-2] if trans_b else b.shape[-1]
    return b.new_empty(*b.shape[:-2], m, n)


@_bs_sdd.register_fake
def _(a, b, crow, col, row, ccol, row_t, perm_t, block, rows, cols, trans_a, trans_b):
    return a.new_empty(*a.shape[:-2], col.shape[0], block, block)


_META = ("crow", "col", "row", "ccol", "row_t", "perm_t", "block", "rows", "cols")


def _dds_setup(ctx, inputs, output):
    a, b_data = inputs[0], inputs[1]
    ctx.meta = inputs[2:11]
    ctx.trans = inputs[11:13]
    ctx.save_for_backward(a, b_data)


def _dds_backward(ctx, grad):
    """C = op(A) @ op(S): dA via dds with S's transpose flipped; dS via sdd on the layout (no densify)."""
    a, b_data = ctx.saved_tensors
    trans_a, trans_b = ctx.trans
    meta = ctx.meta
    grad_a = grad_data = None
    if ctx.needs_input_grad[0]:
        g = torch.ops.sparse.bs_dds(grad, b_data, *meta, False, not trans_b)   # dC @ op(S)^T
        grad_a = g.transpose(-1, -2) if trans_a else g
    if ctx.needs_input_grad[1]:
        if trans_b:   # d(S) = (op(A)^T dC)^T = dC^T op(A)
            gd = torch.ops.sparse.bs_sdd(grad, a, *meta, True, trans_a)
        else:         # d(S) = op(A)^T dC
            gd = torch.ops.sparse.bs_sdd(a, grad, *meta, not trans_a, False)
        if gd.dim() > b_data.dim():  # data shared by the batch: sum its per-sample gradients
            gd = gd.sum(dim=tuple(range(gd.dim() - b_data.dim())))
        grad_data = gd
    return (grad_a, grad_data) + (None,) * 11


_bs_dds.register_autograd(_dds_backward, setup_context=_dds_setup)


def _linear_setup(ctx, inputs, output):
    x, w_data, bias = inputs[:3]
    ctx.meta = inputs[3:12]
    ctx.save_for_backward(x, w_data)


def _linear_backward(ctx, grad):
    """y = x W^T + b: dX = dY W (dds on the transpose metadata), dW = dY^T x (sdd), db = sum of dY."""
    x, w_data = ctx.saved_tensors
    meta = ctx.meta
    grad_x = grad_w = grad_b = None
    if ctx.needs_input_grad[0]:
        grad_x = torch.ops.sparse.bs_dds(grad, w_data, *meta, False, False)
    if ctx.needs_input_grad[1] and ctx.needs_input_grad[2]:   # one pass over dY for both
        grad_w, grad_b = torch.ops.sparse.bs_sdd_rowsum(grad, x, *meta, True, False)
    elif ctx.needs_input_grad[1]:
        grad_w = torch.ops.sparse.bs_sdd(grad, x, *meta, True, False)
    elif ctx.needs_input_grad[2]:
        grad_b = grad.sum(0)
    return (grad_x, grad_w, grad_b) + (None,) * 9


_bs_linear.register_autograd(_linear_backward, setup_context=_linear_setup)


class _EagerLinear(torch.autograd.Function):
    """``torch.ops.sparse.bs_linear`` and its autograd for eager calls of :func:`linear`, without the
    custom-op layers (argument re-checks, redispatch, the dynamo-disable wrapper): those cost ~0.3 ms per
    fwd+bwd of a layer, a third of a MiniLM FFN Linear's kernel time at 90 % sparsity on an AMX CPU.
    Same backends, same kernels, same results; under ``torch.compile`` :func:`linear` takes the custom
    op. A double backward (``create_graph=True``) goes through the custom ops, which are differentiable.
    """

    @staticmethod
    def forward(ctx, x, w_data, bias, layout):
        ctx.layout = layout
        ctx.save_for_backward(x, w_data)
        return linear_op(x, w_data, bias, layout)

    @staticmethod
    def backward(ctx, grad):
        x, w_data = ctx.saved_tensors
        layout = ensure_validated(ctx.layout)   # an in-place edit since forward is checked again
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        if torch.is_grad_enabled():   # create_graph: differentiable ops
            meta = _meta(layout)
            gx = torch.ops.sparse.bs_dds(grad, w_data, *meta, False, False) if need_x else None
            gw = gb = None
            if need_w and need_b:
                gw, gb = torch.ops.sparse.bs_sdd_rowsum(grad, x, *meta, True, False)
            elif need_w:
                gw = torch.ops.sparse.bs_sdd(grad, x, *meta, True, False)
            elif need_b:
                gb = grad.sum(0)
            return gx, gw, gb, None
        grad = grad.contiguous()
        gx = dds_op(grad, w_data, layout, False, False) if need_x else None
        gw = gb = None
        if need_w and need_b:   # one pass over dY for both
            gw, gb = sdd_rowsum_op(grad, x, layout, True, False)
        elif need_w:
            gw = sdd_op(grad, x, layout, True, False)
        elif need_b:
            gb = grad.sum(0)
        return gx, gw, gb, None


# ---------------------------------------------------------------------------- public functions
def _meta(layout: BlockLayout) -> tuple:
    return (*layout.tensors(), layout.block, layout.shape[0], layout.shape[1])


def dds(a: torch.Tensor, b_data: torch.Tensor, layout: BlockLayout, trans_a: bool = False,
        trans_b: bool = False) -> torch.Tensor:
    """``op(a) @ op(S)``: a ``[..., M, K]`` dense, S block-sparse -> ``[..., M, N]``; differentiable.

    ``dds(x, w_data, layout, trans_b=True)`` is ``x @ W.T`` for a block-sparse ``W [out, in]``.
    """
    check_dds(a, b_data, layout, trans_a, trans_b)
    return torch.ops.sparse.bs_dds(a, b_data, *_meta(layout), bool(trans_a), bool(trans_b))


def dsd(a_data: torch.Tensor, layout: BlockLayout, b: torch.Tensor, trans_a: bool = False,
        trans_b: bool = False) -> torch.Tensor:
    """``op(S) @ op(b)``: S block-sparse, b ``[..., K, N]`` dense -> ``[..., M, N]`` (forward only)."""
    check_dsd(a_data, layout, b, trans_a, trans_b)
    return torch.ops.sparse.bs_dsd(a_data, b, *_meta(layout), bool(trans_a), bool(trans_b))


def sdd(a: torch.Tensor, b: torch.Tensor, layout: BlockLayout, trans_a: bool = False,
        trans_b: bool = False) -> torch.Tensor:
    """Kept blocks of ``op(a) @ op(b)`` -> ``[..., nnz, B, B]`` (forward only)."""
    check_sdd(a, b, layout, trans_a, trans_b)
    return torch.ops.sparse.bs_sdd(a, b, *_meta(layout), bool(trans_a), bool(trans_b))


def linear(x: torch.Tensor, w_data: torch.Tensor, bias: torch.Tensor | None, layout: BlockLayout) -> torch.Tensor:
    """``x @ W^T + bias`` for block-sparse ``W [out, in]`` (data ``[nnz, B, B]``), differentiable.

    x ``[T, in]`` (2-D), bias ``[out]`` or None, all one dtype -> ``[T, out]``. The native CPU backend
    adds the bias inside the kernel; other backends run :func:`dds` and an add.
    """
    _check_linear(x, w_data, bias, layout)
    if torch.compiler.is_compiling():
        return torch.ops.sparse.bs_linear(x, w_data, bias, *_meta(layout))
    return _EagerLinear.apply(x, w_data, bias, ensure_validated(layout))
