"""Argument checks shared by the mask functions: one clear ValueError per bad input."""
from __future__ import annotations

import numbers

import numpy as np
import torch

MAX_M = 32


def check_nm(n, m, *, max_m: int = MAX_M) -> tuple[int, int]:
    for name, v in (("n", n), ("m", m)):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise ValueError(f"{name}: expected an int, got {type(v).__name__} {v!r}")
    n, m = int(n), int(m)
    if n < 1:
        raise ValueError(f"n: expected 1 <= n < m, got n={n}")
    if m < 2 or m > max_m:
        raise ValueError(f"m: expected 2 <= m <= {max_m}, got m={m}")
    if n >= m:
        raise ValueError(f"n: expected n < m (an n:m pattern keeps n of every m), got n={n}, m={m}")
    return n, m


def check_flag(v, name: str) -> bool:
    """A bool argument: ``True``/``False`` (or a numpy bool), nothing merely truthy."""
    if not isinstance(v, (bool, np.bool_)):
        raise ValueError(f"{name}: expected True or False, got {type(v).__name__} {v!r}")
    return bool(v)


def _check_tensor(t, name: str) -> None:
    if not isinstance(t, torch.Tensor):
        hint = " (convert with torch.from_numpy)" if isinstance(t, np.ndarray) else ""
        raise ValueError(f"{name}: expected a torch.Tensor, got {type(t).__name__}{hint}")
    if t.device.type == "meta":
        raise ValueError(f"{name}: expected a tensor with data (CPU or CUDA), got a meta tensor")
    if t.layout != torch.strided:
        raise ValueError(f"{name}: expected a dense (strided) tensor, got layout {t.layout} (call .to_dense())")


# Computed on as they are; every other floating dtype (fp16, bf16, float8) is upcast to fp32, exactly.
_EXACT_DTYPES = (torch.float32, torch.float64)


def check_weight(weight, name: str = "weight", *, check_finite: bool = True) -> torch.Tensor:
    """``weight`` as a 2-D, non-empty, finite float tensor; fp16/bf16/float8 come back upcast to fp32
    (exact), so every backend compares the same values."""
    _check_tensor(weight, name)
    if weight.dim() != 2:
        raise ValueError(f"{name}: expected a 2-D tensor [out_features, in_features] (flatten conv weights "
                         f"to [out, in*kh*kw] first), got shape {tuple(weight.shape)}")
    if weight.numel() == 0:
        raise ValueError(f"{name}: expected a non-empty tensor, got shape {tuple(weight.shape)}")
    if not (weight.is_floating_point()):
        raise ValueError(f"{name}: expected a floating-point tensor (float32/float16/bfloat16/float64), "
                         f"got dtype {weight.dtype}")
    if weight.dtype not in _EXACT_DTYPES:
        weight = weight.detach().float()
    # max |w| is NaN/Inf iff some entry is (max propagates NaN); one reduction, no float64 copy and no
    # materialised isfinite() mask on the common all-finite path.
    if check_finite and not bool(torch.isfinite(torch.linalg.vector_norm(weight.detach(), ord=float("inf")))):
        bad = int((~torch.isfinite(weight)).sum())
        raise ValueError(f"{name}: expected finite values, got {bad} NaN/Inf entries")
    return weight


def check_mask(mask, name: str = "mask") -> torch.Tensor:
    _check_tensor(mask, name)
    if mask.dim() != 2:
        raise ValueError(f"{name}: expected a 2-D tensor, got shape {tuple(mask.shape)}")
    return mask


def check_dim(dim, ndim: int = 2) -> int:
    if isinstance(dim, bool) or not isinstance(dim, numbers.Integral) or not -ndim <= dim < ndim:
        raise ValueError(f"dim: expected one of {list(range(-ndim, ndim))}, got {dim!r}")
    return int(dim) % ndim


def pad_to_multiple(weight: torch.Tensor, m: int, dims: tuple[int, ...], pad: bool,
                    name: str = "weight") -> torch.Tensor:
    """Zero-pad ``weight`` along ``dims`` to multiples of ``m``; raise unless ``pad`` when needed."""
    pad = check_flag(pad, "pad")
    pads = [0, 0, 0, 0]  # F.pad order: (dim1 left, dim1 right, dim0 left, dim0 right)
    for d in dims:
        rem = weight.shape[d] % m
        if rem:
            if not pad:
                raise ValueError(f"{name}: dimension {d} has size {weight.shape[d]}, expected a multiple of "
                                 f"m={m} (pass pad=True to treat the tail as zero-padded)")
            pads[2 * (1 - d) + 1] = m - rem
    if any(pads):
        weight = torch.nn.functional.pad(weight, pads)
    return weight


def native_operand(w: torch.Tensor) -> torch.Tensor:
    """``w`` as the csrc kernels take it: contiguous fp32, or fp64 (computed in fp64)."""
    return w.contiguous() if w.dtype in _EXACT_DTYPES else w.float().contiguous()


def scores(weight: torch.Tensor) -> torch.Tensor:
    """|w| in the precision every backend computes in: fp32, or fp64 for fp64 weights (never rounded
    to fp32: 1e300 would become inf, and values that differ below fp32 precision would tie)."""
    s = weight.detach().abs()
    return s if s.dtype in _EXACT_DTYPES else s.float()
