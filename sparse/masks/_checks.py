"""Argument checks shared by the mask functions: one clear ValueError per bad input."""
from __future__ import annotations

import numbers

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


def check_weight(weight, name: str = "weight", *, check_finite: bool = True) -> torch.Tensor:
    if not isinstance(weight, torch.Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor, got {type(weight).__name__}")
    if weight.dim() != 2:
        raise ValueError(f"{name}: expected a 2-D tensor [out_features, in_features] (flatten conv weights "
                         f"to [out, in*kh*kw] first), got shape {tuple(weight.shape)}")
    if weight.numel() == 0:
        raise ValueError(f"{name}: expected a non-empty tensor, got shape {tuple(weight.shape)}")
    if not (weight.is_floating_point()):
        raise ValueError(f"{name}: expected a floating-point tensor (float32/float16/bfloat16/float64), "
                         f"got dtype {weight.dtype}")
    # max |w| is NaN/Inf iff some entry is (max propagates NaN); one reduction, no float64 copy and no
    # materialised isfinite() mask on the common all-finite path.
    if check_finite and not bool(torch.isfinite(torch.linalg.vector_norm(weight.detach(), ord=float("inf")))):
        bad = int((~torch.isfinite(weight)).sum())
        raise ValueError(f"{name}: expected finite values, got {bad} NaN/Inf entries")
    return weight


def check_mask(mask, name: str = "mask") -> torch.Tensor:
    if not isinstance(mask, torch.Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor, got {type(mask).__name__}")
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


def scores(weight: torch.Tensor) -> torch.Tensor:
    """|w| in a dtype where comparisons are exact enough: fp32 (fp64 stays fp64)."""
    s = weight.detach().abs()
    return s if s.dtype == torch.float64 else s.float()
