"""2:4 kernels: prune + compress (incl. the exact transposable mask fused with the compression of W and W^T),
decompress, and MVUE sparsification of gradients; ``torch.library`` custom ops over ``sparse._C``.

Format (what torch's CUTLASS semi-structured GEMMs take for fp16/bf16, so that on a GPU the outputs feed
``torch._sparse_semi_structured_mm`` / ``_linear`` and :class:`torch.sparse.SparseSemiStructuredTensorCUTLASS`
without conversion): ``values [R, C/2]`` (the two kept values of each group of 4 along a row, in column order) and
``meta int16 [R, C/16]``: one 4-bit code per group (bits 0-1: index of the first kept element, bits 2-3: of the
second), four groups per 16-bit word, the words reordered into CUTLASS's ``ColumnMajorInterleaved<2>`` layout. It is
bit-identical to ``torch.sparse._semi_structured_conversions.sparse_semi_structured_from_dense_cutlass`` on a 2:4
fp16/bf16 matrix (tested). Needs ``R % 32 == 0`` and ``C % 32 == 0`` (the words are interleaved in pairs of word
columns; torch's converter fails on ``C % 32 == 16`` too); torch's GEMMs further need the sparse operand's
``C % 64 == 0`` (``sparse.nn.SparseLinear24`` checks that). fp32 values use the same format (torch's fp32 CUTLASS GEMM is 1:2, which a 2:4 mask does not satisfy): fp32
is for round trips and the CPU fallback. The cuSPARSELt layout (``torch._cslt_compress``) is not produced here.

Masks: rows -> the 2 largest ``|w|`` of each group of 4 (ties to the lower index, as :func:`sparse.masks.nm_mask`);
``transposable=True`` -> every aligned 4x4 tile is the best of the 90 0/1 matrices with two ones per row and column,
computed with the arithmetic and tie rule of the enumeration solver (row-combination sums, then pattern sums, in
fp32; patterns in lexicographic order, the first strict maximum wins), so the mask equals
``sparse.masks.transposable_mask(w, 2, 4, method="exact")`` bit for bit.

MVUE (minimum-variance unbiased sparsification, Chmiel et al., ICLR 2023), groups along dim 1:

* 1:2 (:func:`mvue_12`): of a pair ``(a_1, a_2)`` with ``s = |a_1| + |a_2| > 0`` keep ``a_i`` with probability
  ``p_i = |a_i| / s``, as ``sign(a_i) s``. ``E = p_i sign(a_i) s = a_i``: unbiased. A zero pair stays zero.
* 2:4 (:func:`mvue_24`): inclusion probabilities ``p_i = min(1, c |a_i|)`` with ``sum p_i = 2``; exactly two
  elements are drawn with these marginals by systematic sampling (cumulate the ``p_i`` on ``[0, 2)``, take the
  elements owning the points ``u`` and ``u + 1``, ``u ~ U[0, 1)``; each ``p_i <= 1``, so the two points are in two
  different elements and element ``i`` is hit with probability exactly ``p_i``); a kept element becomes ``a_i / p_i``.
  Unbiased: ``E[out_i] = p_i (a_i / p_i) + (1 - p_i) 0 = a_i`` whenever ``p_i > 0``, and ``p_i = 0`` only for
  ``a_i = 0``, whose output 0 is exact. Choosing ``c``: with ``S = sum |a_i|``, ``c = 2 / S`` unless the largest
  element dominates (``2 |a_max| >= S``, it would get ``p > 1``): then ``p_max = 1`` and the other three share the
  second draw, ``p_j = |a_j| / (S - |a_max|)`` (each ``<= 1``, sum 1; a second cap cannot occur). Groups with at
  most two non-zeros are kept as they are (``p = 1`` for the non-zeros: the same formula). Minimum variance:
  ``Var(out_i) = a_i^2 (1 / p_i - 1)`` depends only on the marginals, and minimising ``sum a_i^2 / p_i`` subject to
  ``sum p_i <= 2`` (any scheme keeping at most two), ``0 < p_i <= 1`` gives (Lagrange / KKT) exactly
  ``p_i = min(1, c |a_i|)``: no unbiased 2:4 scheme has a smaller total variance per group.

Draws: one Philox4x32-10 word per group (counter ``(group index, offset)``, key ``seed``; the generator of
:mod:`sparse.ops.dropout`), ``u`` = its top 24 bits / 2^24; ``(seed, offset)`` are two 63-bit integers drawn from
``generator`` (default: torch's default CPU generator). CPU and CUDA run the same code, so the same seed gives the
same draws on both (up to fp32 rounding differences of the device's division).
"""
from __future__ import annotations

import torch

from .._backends import ext

__all__ = ["compress_24", "decompress_24", "mask_24", "mvue_24", "mvue_12", "to_semi_structured", "native_reason",
           "DTYPES"]

DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def native_reason() -> str | None:
    """None if ``sparse._C`` has the 2:4 kernels, else why not (an old build, or no build)."""
    mod = ext()
    if mod is None:
        return "sparse._C is not built (pip install --no-build-isolation -e .)"
    if not hasattr(mod, "sparse24_compress"):
        return "sparse._C predates the 2:4 kernels; rebuild it (python setup.py build_ext --inplace)"
    return None


def _mod(name: str):
    why = native_reason()
    if why is not None:
        raise RuntimeError(f"{name}: {why}")
    return ext()


# ------------------------------------------------------------------------------------------------ custom ops
@torch.library.custom_op("sparse::compress_24", mutates_args=())
def _compress_op(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    values, meta = _mod("compress_24").sparse24_compress(w, False)
    return values, meta


@_compress_op.register_fake
def _(w):
    r, c = w.shape
    return w.new_empty(r, c // 2), w.new_empty(r, c // 16, dtype=torch.int16)


@torch.library.custom_op("sparse::compress_24_transposable", mutates_args=())
def _compress_t_op(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    values, meta, values_t, meta_t = _mod("compress_24").sparse24_compress(w, True)
    return values, meta, values_t, meta_t


@_compress_t_op.register_fake
def _(w):
    r, c = w.shape
    return (w.new_empty(r, c // 2), w.new_empty(r, c // 16, dtype=torch.int16),
            w.new_empty(c, r // 2), w.new_empty(c, r // 16, dtype=torch.int16))


@torch.library.custom_op("sparse::mask_24", mutates_args=())
def _mask_op(w: torch.Tensor, transposable: bool) -> torch.Tensor:
    return _mod("mask_24").sparse24_mask(w, transposable)


@_mask_op.register_fake
def _(w, transposable):
    return w.new_empty(w.shape, dtype=torch.bool)


@torch.library.custom_op("sparse::decompress_24", mutates_args=())
def _decompress_op(values: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
    return _mod("decompress_24").sparse24_decompress(values, meta)


@_decompress_op.register_fake
def _(values, meta):
    return values.new_empty(values.shape[0], 2 * values.shape[1])


@torch.library.custom_op("sparse::mvue_24", mutates_args=())
def _mvue_op(g: torch.Tensor, seed_offset: torch.Tensor, m: int) -> torch.Tensor:
    return _mod("mvue_24").sparse24_mvue(g, seed_offset, m)


@_mvue_op.register_fake
def _(g, seed_offset, m):
    return g.new_empty(g.shape)


# ------------------------------------------------------------------------------------------------ checks
def _check_tensor(x, name: str, *, finite: bool = True) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if x.layout != torch.strided:
        raise ValueError(f"{name}: expected a dense strided tensor, got layout {x.layout}")
    if x.dim() != 2:
        raise ValueError(f"{name}: expected a 2-D tensor, got shape {tuple(x.shape)}")
    if x.dtype not in DTYPES:
        raise ValueError(f"{name}: expected float32, float16 or bfloat16, got {x.dtype}")
    if x.device.type not in ("cpu", "cuda"):
        raise ValueError(f"{name}: expected a CPU or CUDA tensor, got {x.device}")
    if finite and x.numel() and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name}: contains NaN or Inf")
    return x.detach().contiguous()


def _check_bool(v, name: str) -> bool:
    if not isinstance(v, bool):
        raise ValueError(f"{name}: expected a bool, got {v!r}")
    return v


def _check_generator(generator, x: torch.Tensor) -> None:
    if generator is None:
        return
    if not isinstance(generator, torch.Generator):
        raise ValueError(f"generator: expected None or a torch.Generator, got {type(generator).__name__}")
    if generator.device.type != x.device.type:
        raise ValueError(f"generator: on {generator.device}, but the gradient is on {x.device}")


def _seed_offset(generator: torch.Generator | None) -> torch.Tensor:
    dev = generator.device if generator is not None else torch.device("cpu")
    return torch.randint(0, 2**63 - 1, (2,), dtype=torch.int64, generator=generator, device=dev).cpu()


# ------------------------------------------------------------------------------------------------ public
def compress_24(w: torch.Tensor, transposable: bool = False):
    """2:4-prune and compress ``w`` in the CUTLASS layout (module docstring).

    Args:
        w: ``[R, C]`` float32/float16/bfloat16, CPU or CUDA, finite; ``R % 32 == 0`` and ``C % 32 == 0``.
        transposable: keep the exact transposable 2:4 mask and also compress ``W^T`` (same pass).

    Returns:
        ``(values [R, C/2], meta int16 [R, C/16])``; with ``transposable``
        ``(values, meta, values_t [C, R/2], meta_t int16 [C, R/16])``, where ``values_t, meta_t`` compress
        ``(w * mask).T``. Values have ``w``'s dtype and device.
    """
    w = _check_tensor(w, "w")
    transposable = _check_bool(transposable, "transposable")
    r, c = w.shape
    if r % 32 or c % 32:
        raise ValueError(f"w: the CUTLASS 2:4 layout needs rows divisible by 32 and cols divisible by 32, "
                         f"got shape {(r, c)}")
    return _compress_t_op(w) if transposable else _compress_op(w)


def mask_24(w: torch.Tensor, transposable: bool = False) -> torch.Tensor:
    """The mask :func:`compress_24` keeps: ``torch.bool [R, C]``; needs ``C % 4 == 0`` (``transposable``: ``R`` too)."""
    w = _check_tensor(w, "w")
    transposable = _check_bool(transposable, "transposable")
    r, c = w.shape
    if c % 4 or (transposable and r % 4):
        raise ValueError(f"w: expected cols{' and rows' if transposable else ''} divisible by 4, got shape {(r, c)}")
    return _mask_op(w, transposable)


def decompress_24(values: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
    """Dense ``[R, 2 * values.shape[1]]`` (values' dtype, zeros where pruned) from :func:`compress_24`'s
    ``values [R, C/2]`` and ``meta int16 [R, C/16]`` (CUTLASS layout, ``R % 32 == 0``, ``C % 32 == 0``)."""
    values = _check_tensor(values, "values", finite=False)
    if not isinstance(meta, torch.Tensor) or meta.dtype != torch.int16 or meta.dim() != 2:
        raise ValueError(f"meta: expected a 2-D int16 tensor, got "
                         f"{getattr(meta, 'dtype', type(meta).__name__)} {tuple(getattr(meta, 'shape', ()))}")
    if meta.device != values.device:
        raise ValueError(f"meta: on {meta.device}, but values are on {values.device}")
    r, half = values.shape
    if r % 32 or (2 * half) % 32 or tuple(meta.shape) != (r, 2 * half // 16):
        raise ValueError(f"values/meta: expected values [R, C/2] and meta [R, C/16] with R % 32 == 0 and C % 32 == 0, "
                         f"got values {tuple(values.shape)} and meta {tuple(meta.shape)}")
    return _decompress_op(values, meta.contiguous())


def _mvue(g, generator, m: int, name: str) -> torch.Tensor:
    g = _check_tensor(g, "g")
    _check_generator(generator, g)
    if g.shape[1] % m:
        raise ValueError(f"g: {name} groups run along dim 1, which must be divisible by {m}; got shape {tuple(g.shape)}")
    if g.numel() == 0:
        return g.clone()
    return _mvue_op(g, _seed_offset(generator), m)


def mvue_24(g: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Unbiased minimum-variance 2:4 sparsification of ``g [R, C]`` along dim 1 (module docstring).

    ``g``: float32/float16/bfloat16, CPU or CUDA, ``C % 4 == 0``, finite. ``generator``: a ``torch.Generator`` on
    ``g``'s device type, or None (torch's default CPU generator). Returns a tensor of ``g``'s shape and dtype with at
    most two non-zeros per group of 4 and ``E[out] = g``."""
    return _mvue(g, generator, 4, "2:4")


def mvue_12(g: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Unbiased minimum-variance 1:2 sparsification of ``g [R, C]`` along dim 1 (``C`` even; see :func:`mvue_24`)."""
    return _mvue(g, generator, 2, "1:2")


def to_semi_structured(values: torch.Tensor, meta: torch.Tensor, shape, values_t: torch.Tensor | None = None,
                       meta_t: torch.Tensor | None = None):
    """A :class:`torch.sparse.SparseSemiStructuredTensorCUTLASS` of dense ``shape`` built from this module's
    ``values``/``meta`` (and optionally the transposed pair) as they are, without conversion."""
    from torch.sparse import SparseSemiStructuredTensorCUTLASS

    return SparseSemiStructuredTensorCUTLASS(torch.Size(shape), packed=values, meta=meta, packed_t=values_t,
                                             meta_t=meta_t, compressed_swizzled_bitmask=None, requires_grad=False)
