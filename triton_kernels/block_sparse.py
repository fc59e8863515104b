"""Launchers of the block-sparse matmuls: ``sdd``, ``dsd``, ``dds`` (check, allocate, launch).

Naming (as in OpenAI's blocksparse / Triton's block-sparse ops): the three letters are the output,
the left and the right operand, ``s`` sparse (block data + :class:`BlockLayout`), ``d`` dense.

* ``sdd(a, b, layout)``: the kept blocks of ``op(a) @ op(b)`` -> ``[..., nnz, B, B]`` (dW of a layer).
* ``dsd(a_data, layout, b)``: ``op(S) @ op(b)`` -> ``[..., M, N]``.
* ``dds(a, b_data, layout)``: ``op(a) @ op(S)`` -> ``[..., M, N]`` (the forward of a linear layer).

``op(t)`` is ``t`` or its transpose of the last two dims (``trans_a`` / ``trans_b``); a transposed
sparse operand walks the layout's transpose metadata, so nothing is converted. Dense operands may have
leading batch dims; block data is ``[nnz, B, B]`` (shared by the batch) or ``[..., nnz, B, B]`` with
the same leading dims. Inputs: fp32, fp16 or bf16 (all the same); accumulation is fp32; the output
has the input dtype. Tensors must be on CUDA, or on CPU with ``TRITON_INTERPRET=1`` (tests only).

Triton itself is imported on the first launch, never at import of this module.
"""
from __future__ import annotations

import functools
import math
import os

import torch

from .layout import BlockLayout, check_data

DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def interpreting() -> bool:
    """True when triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


# ---------------------------------------------------------------------------- configs
def cuda_configs(kind: str) -> list:
    """Autotune configs for the CUDA backend of kernel ``kind`` ("sdd", "dsd" or "dds")."""
    import triton

    if kind not in _TILE_ARG:
        raise ValueError(f"kind: expected one of {sorted(_TILE_ARG)}, got {kind!r}")
    tiles = (32, 64, 128)  # configs that exceed shared memory for a block size are skipped by the autotuner
    return [triton.Config({_TILE_ARG[kind]: t}, num_warps=w, num_stages=s)
            for t in tiles for w in (4, 8) for s in (2, 3, 4)]


def interpreter_config(kind: str) -> dict:
    """The single config used under ``TRITON_INTERPRET=1`` (no autotuning in the interpreter)."""
    if kind not in _TILE_ARG:
        raise ValueError(f"kind: expected one of {sorted(_TILE_ARG)}, got {kind!r}")
    return {_TILE_ARG[kind]: 32}


_TILE_ARG = {"dsd": "BLOCK_N", "dds": "BLOCK_M", "sdd": "BLOCK_K"}
_TUNE_KEY = {"dsd": ["N", "BLOCK", "INDIRECT"], "dds": ["M", "BLOCK", "INDIRECT"], "sdd": ["K", "BLOCK"]}


def _kernel(kind: str):
    # Imported here, not at module import: TRITON_INTERPRET is read when the kernels are decorated.
    from . import _block_sparse_kernels as k

    fn = {"dsd": k._dsd_kernel, "dds": k._dds_kernel, "sdd": k._sdd_kernel}[kind]
    if interpreting():
        from triton.runtime.interpreter import InterpretedFunction

        if not isinstance(fn, InterpretedFunction):
            raise RuntimeError("TRITON_INTERPRET=1 is set, but triton_kernels._block_sparse_kernels was imported "
                               "before it was: set the variable before the first kernel launch")
    return fn


@functools.lru_cache(maxsize=None)
def _tuned(kind: str):
    import triton

    return triton.autotune(configs=cuda_configs(kind), key=_TUNE_KEY[kind])(_kernel(kind))


def _launch(kind: str, grid, *args, **meta):
    if interpreting():
        cfg = interpreter_config(kind)
        fn = _kernel(kind)
        fn[grid(cfg)](*args, **meta, **cfg)
    else:
        _tuned(kind)[grid](*args, **meta)


# ---------------------------------------------------------------------------- checks
def _check_layout(layout) -> None:
    if not isinstance(layout, BlockLayout):
        raise ValueError(f"layout: expected a triton_kernels.BlockLayout, got {type(layout).__name__}")


def _check_tensor(t, name: str, dtype=None) -> None:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in DTYPES:
        raise ValueError(f"{name}: expected dtype float32, float16 or bfloat16, got {t.dtype}")
    if dtype is not None and t.dtype != dtype:
        raise ValueError(f"{name}: expected dtype {dtype} (all operands must share one dtype), got {t.dtype}")


def _check_launchable(t: torch.Tensor, name: str) -> None:
    if t.device.type != "cuda" and not interpreting():
        raise ValueError(f"{name}: expected a CUDA tensor (CPU tensors only with TRITON_INTERPRET=1), "
                         f"got a tensor on {t.device}")


def _check_dense(t, name: str, dtype=None) -> None:
    _check_tensor(t, name, dtype)
    if t.dim() < 2:
        raise ValueError(f"{name}: expected a dense tensor [..., rows, cols], got shape {tuple(t.shape)}")


def _dims(t: torch.Tensor, trans: bool) -> tuple[int, int]:
    r, c = t.shape[-2], t.shape[-1]
    return (c, r) if trans else (r, c)


def _as3d(t: torch.Tensor, trans: bool):
    """``t`` as ``[Z, rows, cols]`` of op(t) and its (z, row, col) strides (a transpose swaps strides)."""
    t3 = t.reshape(math.prod(t.shape[:-2]), t.shape[-2], t.shape[-1])
    sz, s0, s1 = t3.stride()
    return t3, (sz, s1, s0) if trans else (sz, s0, s1)


def _data_lead(data: torch.Tensor, lead: tuple, name: str) -> None:
    if data.dim() > 3 and tuple(data.shape[:-3]) != tuple(lead):
        raise ValueError(f"{name}: expected leading dims () or {tuple(lead)} (those of the dense operand), "
                         f"got {tuple(data.shape[:-3])}")


def _data_strides(data: torch.Tensor, trans: bool):
    d4 = data.reshape(math.prod(data.shape[:-3]), *data.shape[-3:])
    sz = 0 if data.dim() == 3 else d4.stride(0)
    _, sp, s0, s1 = d4.stride()
    return d4, (sz, sp, s1, s0) if trans else (sz, sp, s0, s1)


def _flags(dtype) -> dict:
    return {"DOT_F32": interpreting() and dtype != torch.float32, "IEEE": dtype == torch.float32}


# ---------------------------------------------------------------------------- argument checks
# Shared by every backend (sparse.ops.block_sparse calls them before dispatch): shapes, dtypes,
# devices and layout; no device-type restriction here.
def check_dsd(a_data, layout, b, trans_a=False, trans_b=False):
    """Validate :func:`dsd` arguments; returns ``(M, N, leading dims)``."""
    _check_layout(layout)
    _check_tensor(a_data, "a_data")
    check_data(layout, a_data, "a_data")
    _check_dense(b, "b", a_data.dtype)
    _check_same_device(b, "b", layout)
    m, k = layout.shape[::-1] if trans_a else layout.shape
    kb, n = _dims(b, trans_b)
    if kb != k:
        raise ValueError(f"b: expected {'[..., N, K]' if trans_b else '[..., K, N]'} with K={k} "
                         f"(op(S) is {m}x{k}), got shape {tuple(b.shape)}")
    lead = tuple(b.shape[:-2])
    _data_lead(a_data, lead, "a_data")
    return m, n, lead


def check_dds(a, b_data, layout, trans_a=False, trans_b=False):
    """Validate :func:`dds` arguments; returns ``(M, N, leading dims)``."""
    _check_layout(layout)
    _check_dense(a, "a")
    _check_tensor(b_data, "b_data", a.dtype)
    check_data(layout, b_data, "b_data")
    _check_same_device(a, "a", layout)
    k, n = layout.shape[::-1] if trans_b else layout.shape
    m, ka = _dims(a, trans_a)
    if ka != k:
        raise ValueError(f"a: expected {'[..., K, M]' if trans_a else '[..., M, K]'} with K={k} "
                         f"(op(S) is {k}x{n}), got shape {tuple(a.shape)}")
    lead = tuple(a.shape[:-2])
    _data_lead(b_data, lead, "b_data")
    return m, n, lead


def check_sdd(a, b, layout, trans_a=False, trans_b=False):
    """Validate :func:`sdd` arguments; returns ``(K, leading dims)``."""
    _check_layout(layout)
    _check_dense(a, "a")
    _check_dense(b, "b", a.dtype)
    m, k = _dims(a, trans_a)
    kb, n = _dims(b, trans_b)
    if (m, n) != layout.shape:
        raise ValueError(f"a, b: expected op(a) @ op(b) of shape {layout.shape} (the layout's), "
                         f"got {m}x{n} from a {tuple(a.shape)}, b {tuple(b.shape)}")
    if kb != k:
        raise ValueError(f"b: expected inner dim K={k} (from a), got shape {tuple(b.shape)}")
    if tuple(a.shape[:-2]) != tuple(b.shape[:-2]):
        raise ValueError(f"a, b: expected the same leading dims, got {tuple(a.shape[:-2])} and "
                         f"{tuple(b.shape[:-2])}")
    _check_same_device(a, "a", layout)
    _check_same_device(b, "b", layout)
    return k, tuple(a.shape[:-2])


def _check_same_device(t: torch.Tensor, name: str, layout: BlockLayout) -> None:
    if t.device != layout.device:
        raise ValueError(f"{name}: expected a tensor on the layout's device {layout.device}, got {t.device}")


# ---------------------------------------------------------------------------- launchers
def dsd(a_data: torch.Tensor, layout: BlockLayout, b: torch.Tensor, trans_a: bool = False,
        trans_b: bool = False) -> torch.Tensor:
    """``op(S) @ op(b)``: S block-sparse ``layout.shape``, b ``[..., K, N]`` -> ``[..., M, N]``.

    a_data: ``[nnz, B, B]`` or ``[..., nnz, B, B]`` (b's leading dims); b: same dtype and device.
    """
    m, n, lead = check_dsd(a_data, layout, b, trans_a, trans_b)
    _check_launchable(b, "b")
    b3, (sbz, sbk, sbn) = _as3d(b, trans_b)
    z = b3.shape[0]
    c = torch.zeros(z, m, n, dtype=b.dtype, device=b.device)
    if layout.nnz == 0 or c.numel() == 0:
        return c.reshape(*lead, m, n)
    d4, (sdz, sdp, sd0, sd1) = _data_strides(a_data, trans_a)
    if trans_a:
        seg, idx, dptr = layout.ccol, layout.row_t, layout.perm_t
    else:
        seg, idx, dptr = layout.crow, layout.col, layout.crow
    grid = lambda meta: (m // layout.block, triton_cdiv(n, meta["BLOCK_N"]), z)  # noqa: E731
    _launch("dsd", grid, d4, seg, idx, dptr, b3, c, n, sdz, sdp, sd0, sd1, sbz, sbk, sbn, *c.stride(),
            BLOCK=layout.block, INDIRECT=trans_a, **_flags(b.dtype))
    return c.reshape(*lead, m, n)


def dds(a: torch.Tensor, b_data: torch.Tensor, layout: BlockLayout, trans_a: bool = False,
        trans_b: bool = False) -> torch.Tensor:
    """``op(a) @ op(S)``: a ``[..., M, K]``, S block-sparse ``layout.shape`` -> ``[..., M, N]``.

    b_data: ``[nnz, B, B]`` or ``[..., nnz, B, B]`` (a's leading dims); same dtype and device as a.
    ``dds(x, W_data, layout, trans_b=True)`` is ``x @ W.T``, the forward of a linear layer.
    """
    m, n, lead = check_dds(a, b_data, layout, trans_a, trans_b)
    _check_launchable(a, "a")
    a3, (saz, sam, sak) = _as3d(a, trans_a)
    z = a3.shape[0]
    c = torch.zeros(z, m, n, dtype=a.dtype, device=a.device)
    if layout.nnz == 0 or c.numel() == 0:
        return c.reshape(*lead, m, n)
    d4, (sdz, sdp, sd0, sd1) = _data_strides(b_data, trans_b)
    if trans_b:
        seg, idx, dptr = layout.crow, layout.col, layout.crow
    else:
        seg, idx, dptr = layout.ccol, layout.row_t, layout.perm_t
    grid = lambda meta: (triton_cdiv(m, meta["BLOCK_M"]), n // layout.block, z)  # noqa: E731
    _launch("dds", grid, a3, d4, seg, idx, dptr, c, m, saz, sam, sak, sdz, sdp, sd0, sd1, *c.stride(),
            BLOCK=layout.block, INDIRECT=not trans_b, **_flags(a.dtype))
    return c.reshape(*lead, m, n)


def sdd(a: torch.Tensor, b: torch.Tensor, layout: BlockLayout, trans_a: bool = False,
        trans_b: bool = False) -> torch.Tensor:
    """Kept blocks of ``op(a) @ op(b)``: a ``[..., M, K]``, b ``[..., K, N]`` -> ``[..., nnz, B, B]``.

    ``layout.shape`` must be ``(M, N)``; a and b have the same leading dims, dtype and device.
    ``sdd(dy, x, layout, trans_a=True)`` is the weight gradient of a block-sparse linear layer.
    """
    k, lead = check_sdd(a, b, layout, trans_a, trans_b)
    _check_launchable(a, "a")
    bs = layout.block
    a3, (saz, sam, sak) = _as3d(a, trans_a)
    b3, (sbz, sbk, sbn) = _as3d(b, trans_b)
    z = a3.shape[0]
    c = torch.zeros(z, layout.nnz, bs, bs, dtype=a.dtype, device=a.device)
    if c.numel() == 0 or k == 0:
        return c.reshape(*lead, layout.nnz, bs, bs)
    grid = lambda meta: (layout.nnz, z)  # noqa: E731
    _launch("sdd", grid, a3, b3, layout.row, layout.col, c, k, saz, sam, sak, sbz, sbk, sbn, *c.stride(),
            BLOCK=bs, **_flags(a.dtype))
    return c.reshape(*lead, layout.nnz, bs, bs)


def triton_cdiv(x: int, y: int) -> int:
    return -(-x // y)
