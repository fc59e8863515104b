"""Transposable N:M masks: every aligned m x m tile keeps exactly n per row and per column, so both
W and W^T are N:M (the backward GEMM dX = dY W is sparse too).

Methods (all return a complete, valid mask):

* ``"flow"``   networkx min-cost flow per tile: the reference (slow, any n < m).
* ``"exact"``  exact and fast: pattern enumeration (m <= 6 with <= 4096 patterns, e.g. the 90 2:4
               patterns, one matmul), else a batched successive-shortest-path solver (csrc C++/OpenMP
               or CUDA when built, else a batched pure-torch version).
* ``"greedy"`` the 2-approximation vectorised over tiles, repaired by augmenting paths so every tile
               is complete.
* ``"approx"`` greedy + repair + row-pair exchange local search (>= 99.5% of the optimal kept
               magnitude at m = 8 on random and real weights).
* ``"auto"``   ``"exact"`` when enumeration applies or the compiled solver is available, and
               ``"approx"`` otherwise (the pure-torch exact solver is much slower than approx).
"""
from __future__ import annotations

import logging

import torch

from . import _batched, _enum, _flow
from ._checks import check_nm, check_weight, pad_to_multiple, scores
from .tiles import from_tiles, to_tiles
from ..ops.dispatch import Op
from .._backends import ext

log = logging.getLogger(__name__)

METHODS = ("auto", "exact", "approx", "greedy", "flow")


def _ext_usable(s: torch.Tensor, n: int) -> str | None:
    mod = ext()
    if mod is None:
        return "sparse._C not built"
    if s.device.type == "cuda" and not mod.with_cuda():
        return "sparse._C built without CUDA"
    if s.device.type not in ("cpu", "cuda"):
        return f"device {s.device.type} not supported"
    return None


def _cpu_only(s: torch.Tensor, n: int) -> str | None:
    why = _ext_usable(s, n)
    if why is None and s.device.type != "cpu":
        return "input is not on the CPU"
    return why


def _cuda_only(s: torch.Tensor, n: int) -> str | None:
    why = _ext_usable(s, n)
    if why is None and s.device.type != "cuda":
        return "input is not on a CUDA device"
    return why


exact_tiles = Op("transposable_exact")
approx_tiles = Op("transposable_approx")


@exact_tiles.register("cuda", _cuda_only)
@exact_tiles.register("cpu", _cpu_only)
def _exact_ext(s: torch.Tensor, n: int) -> torch.Tensor:
    return ext().transposable_exact(s.float().contiguous(), n)


@exact_tiles.register("torch")
def _exact_torch(s: torch.Tensor, n: int) -> torch.Tensor:
    return _batched.exact(s, n)


@approx_tiles.register("cuda", _cuda_only)
@approx_tiles.register("cpu", _cpu_only)
def _approx_ext(s: torch.Tensor, n: int) -> torch.Tensor:
    return ext().transposable_approx(s.float().contiguous(), n)


@approx_tiles.register("torch")
def _approx_torch(s: torch.Tensor, n: int) -> torch.Tensor:
    x = _batched.repair(_batched.greedy(s, n), s, n)
    return _batched.exchange(x, s, n)


def resolve_method(method: str, n: int, m: int, device: torch.device) -> str:
    """The concrete method ``"auto"`` stands for (see module docstring)."""
    if method not in METHODS:
        raise ValueError(f"method: expected one of {', '.join(METHODS)}, got {method!r}")
    if method != "auto":
        return method
    if _enum.enumerable(n, m):
        return "exact"
    fake = torch.empty(0, device=device)
    return "exact" if exact_tiles.choose(fake, n).backend != "torch" else "approx"


def solve_tiles(s: torch.Tensor, n: int, m: int, method: str) -> torch.Tensor:
    """``s [T, m, m]`` float scores -> bool ``[T, m, m]`` with a concrete method."""
    if s.shape[0] == 0:
        return torch.zeros_like(s, dtype=torch.bool)
    if method == "flow":
        return _flow.flow_tiles(s, n, m)
    if method == "exact":
        if _enum.enumerable(n, m):
            return _enum.enum_tiles(s, n, m)
        return exact_tiles(s, n)
    if method == "greedy":
        return _batched.repair(_batched.greedy(s, n), s, n)
    if method == "approx":
        return approx_tiles(s, n)
    raise ValueError(f"method: expected one of {', '.join(METHODS)}, got {method!r}")


def transposable_mask(weight: torch.Tensor, n: int, m: int, method: str = "auto", *,
                      pad: bool = False) -> torch.Tensor:
    """Transposable N:M mask of a 2-D weight.

    Args:
        weight: ``[out_features, in_features]`` float tensor (fp32/fp16/bf16/fp64), CPU or CUDA.
        n, m: every aligned ``m x m`` tile keeps exactly ``n`` per row and column; ``1 <= n < m <= 32``.
        method: ``"auto"``, ``"exact"``, ``"approx"``, ``"greedy"`` or ``"flow"`` (module docstring).
        pad: allow sizes not divisible by ``m`` (tails treated as zero-padded, mask cropped).

    Returns:
        ``torch.bool`` tensor of ``weight``'s shape on ``weight``'s device. Deterministic for a
        given input and backend, including under ties.
    """
    check_weight(weight)
    n, m = check_nm(n, m)
    if not isinstance(method, str) or method not in METHODS:
        raise ValueError(f"method: expected one of {', '.join(METHODS)}, got {method!r}")
    rows, cols = weight.shape
    w = pad_to_multiple(weight, m, (0, 1), pad)
    concrete = resolve_method(method, n, m, w.device)
    tiles = to_tiles(scores(w), m)
    mask = solve_tiles(tiles, n, m, concrete).to(torch.bool)
    return from_tiles(mask, w.shape, m)[:rows, :cols].contiguous()
