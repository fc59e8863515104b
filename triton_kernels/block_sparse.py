"""Launchers of the block-sparse matmuls: ``sdd``, ``dsd``, ``dds`` (check, allocate, launch).

Naming (as in OpenAI's blocksparse / Triton's block-sparse ops): the three letters are the output,
the left and the right operand, ``s`` sparse, ``d`` dense.

A sparse matrix S ``[rows, cols]`` = ``shape`` keeps ``nnz`` dense ``block x block`` blocks, stored as
data ``[..., nnz, block, block]`` in row-major block order and described by int32 index tensors (CSR
over blocks plus the transpose metadata, so S^T is walked without converting the data):

* ``crow`` ``[R+1]``: block-row pointers; ``col`` ``[nnz]``: block column of each block (ascending
  within a row); ``row`` ``[nnz]``: block row of each block.
* ``ccol`` ``[C+1]``: block-column pointers; ``row_t`` ``[nnz]``: block row of each block in
  column-major order; ``perm_t`` ``[nnz]``: index into the data of each block in column-major order.

* ``sdd(a, b, shape, block, row, col)``: the kept blocks of ``op(a) @ op(b)`` -> ``[..., nnz, B, B]``.
* ``dsd(a_data, shape, block, crow, col, ccol, row_t, perm_t, b)``: ``op(S) @ op(b)`` -> ``[..., M, N]``.
* ``dds(a, b_data, shape, block, crow, col, ccol, row_t, perm_t)``: ``op(a) @ op(S)`` -> ``[..., M, N]``.

``op(t)`` is ``t`` or its transpose of the last two dims (``trans_a`` / ``trans_b``). Dense operands may
have leading batch dims; block data is ``[nnz, B, B]`` (shared by the batch) or ``[..., nnz, B, B]`` with
the same leading dims. Inputs: fp32, fp16 or bf16 (all the same); accumulation is fp32; the output
has the input dtype. Tensors must be on CUDA, or on CPU with ``TRITON_INTERPRET=1`` (tests only).

The launchers check shapes, dtypes and devices, but not the index values: that needs a host sync, so
the caller validates a layout once, not at every launch. The kernels clamp every index they load, so
an invalid layout gives wrong numbers but never a read or write outside the operands. Triton itself is
imported on the first launch, never at import of this module.
"""
from __future__ import annotations

import functools
import math
import os

import torch

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
BLOCKS = (16, 32, 64, 128)  # powers of two (tl.arange), at least 16 (tl.dot)


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


# ---------------------------------------------------------------------------- launch checks
def _expect(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def _check_flag(v, name: str) -> bool:
    _expect(isinstance(v, bool), f"{name}: expected True or False, got {type(v).__name__} {v!r}")
    return v


def _check_operand(t, name: str, dtype=None, min_dim: int = 2) -> None:
    _expect(isinstance(t, torch.Tensor), f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    _expect(t.device.type != "meta", f"{name}: expected a tensor with data, got a meta tensor")
    _expect(t.layout == torch.strided, f"{name}: expected a dense (strided) tensor, got layout {t.layout}")
    _expect(t.dtype in DTYPES, f"{name}: expected dtype float32, float16 or bfloat16, got {t.dtype}")
    _expect(dtype is None or t.dtype == dtype, f"{name}: expected dtype {dtype} (one dtype for all operands), "
                                               f"got {t.dtype}")
    _expect(t.dim() >= min_dim, f"{name}: expected at least {min_dim} dims, got shape {tuple(t.shape)}")
    _expect(t.device.type == "cuda" or interpreting(),
            f"{name}: expected a CUDA tensor (CPU tensors only with TRITON_INTERPRET=1), got a tensor on {t.device}")


def _check_sparse(shape, block: int, device, index: dict, data=None, name: str = "", lead: tuple = ()):
    """Sizes, dtypes and device of a sparse operand's index tensors (and data); returns (rows, cols, nnz)."""
    _expect(isinstance(block, int) and not isinstance(block, bool) and block in BLOCKS,
            f"block: expected one of {BLOCKS}, got {block!r}")
    _expect(isinstance(shape, (tuple, list, torch.Size)) and len(shape) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in shape),
            f"shape: expected (rows, cols), two non-negative ints, got {shape!r}")
    rows, cols = (int(v) for v in shape)
    _expect(rows % block == 0 and cols % block == 0, f"shape: expected multiples of block={block}, got {shape}")
    nnz = index["col"].numel() if isinstance(index["col"], torch.Tensor) else -1
    sizes = {"crow": rows // block + 1, "ccol": cols // block + 1}
    for key, t in index.items():
        _expect(isinstance(t, torch.Tensor) and t.dtype == torch.int32 and t.dim() == 1 and t.is_contiguous()
                and t.device == device and t.numel() == sizes.get(key, nnz),
                f"{key}: expected a contiguous 1-D torch.int32 tensor of {sizes.get(key, nnz)} entries on {device}, "
                "got " + (f"{t.dtype} {tuple(t.shape)} on {t.device}" if isinstance(t, torch.Tensor)
                          else type(t).__name__))
    if data is not None:
        _expect(data.device == device, f"{name}: expected a tensor on {device}, got {data.device}")
        _expect(tuple(data.shape[-3:]) == (nnz, block, block),
                f"{name}: expected [..., nnz={nnz}, {block}, {block}], got {tuple(data.shape)}")
        _expect(data.dim() == 3 or tuple(data.shape[:-3]) == tuple(lead),
                f"{name}: expected leading dims () or {tuple(lead)}, got {tuple(data.shape[:-3])}")
    return rows, cols, nnz


def _dims(t: torch.Tensor, trans: bool) -> tuple[int, int]:
    r, c = t.shape[-2], t.shape[-1]
    return (c, r) if trans else (r, c)


def _as3d(t: torch.Tensor, trans: bool):
    """``t`` as ``[Z, rows, cols]`` of op(t) and its (z, row, col) strides (a transpose swaps strides)."""
    t3 = t.reshape(math.prod(t.shape[:-2]), t.shape[-2], t.shape[-1])
    sz, s0, s1 = t3.stride()
    return t3, (sz, s1, s0) if trans else (sz, s0, s1)


def _data_strides(data: torch.Tensor, trans: bool):
    d4 = data.reshape(math.prod(data.shape[:-3]), *data.shape[-3:])
    sz = 0 if data.dim() == 3 else d4.stride(0)
    _, sp, s0, s1 = d4.stride()
    return d4, (sz, sp, s1, s0) if trans else (sz, sp, s0, s1)


def _flags(dtype) -> dict:
    return {"DOT_F32": interpreting() and dtype != torch.float32, "IEEE": dtype == torch.float32}


# ---------------------------------------------------------------------------- launchers
def dsd(a_data: torch.Tensor, shape: tuple[int, int], block: int, crow: torch.Tensor, col: torch.Tensor,
        ccol: torch.Tensor, row_t: torch.Tensor, perm_t: torch.Tensor, b: torch.Tensor, trans_a: bool = False,
        trans_b: bool = False) -> torch.Tensor:
    """``op(S) @ op(b)``: S block-sparse ``shape``, b ``[..., K, N]`` -> ``[..., M, N]``.

    a_data: ``[nnz, B, B]`` or ``[..., nnz, B, B]`` (b's leading dims); b: same dtype and device.
    """
    trans_a, trans_b = _check_flag(trans_a, "trans_a"), _check_flag(trans_b, "trans_b")
    _check_operand(b, "b")
    _check_operand(a_data, "a_data", b.dtype, min_dim=3)
    lead = tuple(b.shape[:-2])
    index = {"crow": crow, "col": col, "ccol": ccol, "row_t": row_t, "perm_t": perm_t}
    rows, cols, nnz = _check_sparse(shape, block, b.device, index, a_data, "a_data", lead)
    m, k = (cols, rows) if trans_a else (rows, cols)
    kb, n = _dims(b, trans_b)
    _expect(kb == k, f"b: expected inner dim K={k} (op(S) is {m}x{k}), got shape {tuple(b.shape)}")
    b3, (sbz, sbk, sbn) = _as3d(b, trans_b)
    z = b3.shape[0]
    c = torch.zeros(z, m, n, dtype=b.dtype, device=b.device)
    if nnz == 0 or c.numel() == 0:
        return c.reshape(*lead, m, n)
    d4, (sdz, sdp, sd0, sd1) = _data_strides(a_data, trans_a)
    seg, idx, dptr = (ccol, row_t, perm_t) if trans_a else (crow, col, crow)
    grid = lambda meta: (m // block, triton_cdiv(n, meta["BLOCK_N"]), z)  # noqa: E731
    _launch("dsd", grid, d4, seg, idx, dptr, b3, c, n, nnz, k // block, sdz, sdp, sd0, sd1, sbz, sbk, sbn, *c.stride(),
            BLOCK=block, INDIRECT=trans_a, **_flags(b.dtype))
    return c.reshape(*lead, m, n)


def dds(a: torch.Tensor, b_data: torch.Tensor, shape: tuple[int, int], block: int, crow: torch.Tensor,
        col: torch.Tensor, ccol: torch.Tensor, row_t: torch.Tensor, perm_t: torch.Tensor, trans_a: bool = False,
        trans_b: bool = False) -> torch.Tensor:
    """``op(a) @ op(S)``: a ``[..., M, K]``, S block-sparse ``shape`` -> ``[..., M, N]``.

    b_data: ``[nnz, B, B]`` or ``[..., nnz, B, B]`` (a's leading dims); same dtype and device as a.
    With ``trans_b=True`` it is ``x @ W.T``, the forward of a linear layer.
    """
    trans_a, trans_b = _check_flag(trans_a, "trans_a"), _check_flag(trans_b, "trans_b")
    _check_operand(a, "a")
    _check_operand(b_data, "b_data", a.dtype, min_dim=3)
    lead = tuple(a.shape[:-2])
    index = {"crow": crow, "col": col, "ccol": ccol, "row_t": row_t, "perm_t": perm_t}
    rows, cols, nnz = _check_sparse(shape, block, a.device, index, b_data, "b_data", lead)
    k, n = (cols, rows) if trans_b else (rows, cols)
    m, ka = _dims(a, trans_a)
    _expect(ka == k, f"a: expected inner dim K={k} (op(S) is {k}x{n}), got shape {tuple(a.shape)}")
    a3, (saz, sam, sak) = _as3d(a, trans_a)
    z = a3.shape[0]
    c = torch.zeros(z, m, n, dtype=a.dtype, device=a.device)
    if nnz == 0 or c.numel() == 0:
        return c.reshape(*lead, m, n)
    d4, (sdz, sdp, sd0, sd1) = _data_strides(b_data, trans_b)
    seg, idx, dptr = (crow, col, crow) if trans_b else (ccol, row_t, perm_t)
    grid = lambda meta: (triton_cdiv(m, meta["BLOCK_M"]), n // block, z)  # noqa: E731
    _launch("dds", grid, a3, d4, seg, idx, dptr, c, m, nnz, k // block, saz, sam, sak, sdz, sdp, sd0, sd1, *c.stride(),
            BLOCK=block, INDIRECT=not trans_b, **_flags(a.dtype))
    return c.reshape(*lead, m, n)


def sdd(a: torch.Tensor, b: torch.Tensor, shape: tuple[int, int], block: int, row: torch.Tensor,
        col: torch.Tensor, trans_a: bool = False, trans_b: bool = False) -> torch.Tensor:
    """Kept blocks of ``op(a) @ op(b)``: a ``[..., M, K]``, b ``[..., K, N]`` -> ``[..., nnz, B, B]``.

    ``shape`` is ``(M, N)``; a and b have the same leading dims, dtype and device. With ``trans_a=True``
    (a = dY, b = x) it is the weight gradient of a block-sparse linear layer.
    """
    trans_a, trans_b = _check_flag(trans_a, "trans_a"), _check_flag(trans_b, "trans_b")
    _check_operand(a, "a")
    _check_operand(b, "b", a.dtype)
    _, _, nnz = _check_sparse(shape, block, a.device, {"col": col, "row": row})
    m, k = _dims(a, trans_a)
    kb, n = _dims(b, trans_b)
    _expect((m, n) == tuple(shape) and kb == k,
            f"a, b: expected op(a) @ op(b) of shape {tuple(shape)}, got {m}x{k} @ {kb}x{n}")
    _expect(a.shape[:-2] == b.shape[:-2], f"a, b: expected the same leading dims, got {tuple(a.shape[:-2])} "
                                          f"and {tuple(b.shape[:-2])}")
    _expect(b.device == a.device, f"b: expected a tensor on {a.device}, got {b.device}")
    lead = tuple(a.shape[:-2])
    a3, (saz, sam, sak) = _as3d(a, trans_a)
    b3, (sbz, sbk, sbn) = _as3d(b, trans_b)
    z = a3.shape[0]
    c = torch.zeros(z, nnz, block, block, dtype=a.dtype, device=a.device)
    if c.numel() == 0 or k == 0:
        return c.reshape(*lead, nnz, block, block)
    grid = lambda meta: (nnz, z)  # noqa: E731
    _launch("sdd", grid, a3, b3, row, col, c, k, m // block, n // block, saz, sam, sak, sbz, sbk, sbn, *c.stride(),
            BLOCK=block, **_flags(a.dtype))
    return c.reshape(*lead, nnz, block, block)


def triton_cdiv(x: int, y: int) -> int:
    return -(-x // y)
