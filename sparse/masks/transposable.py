"""Transposable N:M masks: every aligned m x m tile keeps exactly n per row and per column, so both
W and W^T are N:M (the backward GEMM dX = dY W is sparse too).

Methods (all return a complete, valid mask):

* ``"flow"``   networkx min-cost flow per tile: the reference (slow, any n < m).
* ``"exact"``  exact and fast: pattern enumeration (m <= 6 with <= 4096 patterns, e.g. the 90 2:4
               patterns, one matmul), else a batched successive-shortest-path solver (csrc C++/OpenMP
               or CUDA when built, else a batched pure-torch version).
* ``"greedy"`` the 2-approximation repaired by augmenting paths so every tile is complete: per tile
               in csrc (CPU/CUDA), or vectorised over tiles in pure torch on any device.
* ``"approx"`` greedy + repair + row-pair exchange local search (>= 99.5% of the optimal kept
               magnitude at m = 8 on random and real weights); for n <= 2, where exchanges are
               weakest and the exact solver costs about the same, the exact solver; where
               enumeration applies (m <= 6), the enumeration (exact and faster).
* ``"auto"``   ``"exact"`` when enumeration applies or the compiled solver is available, and
               ``"approx"`` otherwise (the pure-torch exact solver is much slower than approx).
"""
from __future__ import annotations

import logging

import torch

from . import _batched, _enum, _flow
from ._checks import check_nm, check_weight, native_operand, pad_to_multiple, scores
from .tiles import from_tiles, to_tiles
from ..ops.dispatch import Op
from .._backends import ext

log = logging.getLogger(__name__)

METHODS = ("auto", "exact", "approx", "greedy", "flow")


def _ext_usable(w: torch.Tensor, *args) -> str | None:
    mod = ext()
    if mod is None:
        return "sparse._C not built"
    if w.device.type == "cuda" and not mod.with_cuda():
        return "sparse._C built without CUDA"
    if w.device.type not in ("cpu", "cuda"):
        return f"device {w.device.type} not supported"
    return None


def _on(device_type: str):
    def usable(w: torch.Tensor, *args) -> str | None:
        why = _ext_usable(w, *args)
        if why is None and w.device.type != device_type:
            return f"input is on {w.device.type}, not {device_type}"
        return why
    return usable


# Each op maps a weight matrix ``w [R, C]`` (R, C multiples of m; signs ignored; fp32, or fp64 computed
# in fp64) to a bool mask ``[R, C]``. The csrc kernels read tiles in place; the torch versions gather
# tiles first. Both run the same algorithm with the same tie rules in the same precision, so a given
# input gets the same mask on every backend.
exact_op = Op("transposable_exact")
greedy_op = Op("transposable_greedy")
approx_op = Op("transposable_approx")
enum_op = Op("transposable_enum")


for _backend, _device in (("csrc-cuda", "cuda"), ("csrc-cpu", "cpu")):
    exact_op.register(_backend, _on(_device))(lambda w, n, m: ext().transposable_exact(native_operand(w), n, m))
    approx_op.register(_backend, _on(_device))(
        lambda w, n, m: ext().transposable_approx(native_operand(w), n, m, _batched.EXCHANGE_PASSES))
    greedy_op.register(_backend, _on(_device))(lambda w, n, m: ext().transposable_greedy(native_operand(w), n, m))


@enum_op.register("csrc-cuda", _on("cuda"))
@enum_op.register("csrc-cpu", _on("cpu"))
def _enum_ext(w: torch.Tensor, n: int, m: int) -> torch.Tensor:
    combos, rows = _enum.pattern_table(n, m)
    return ext().transposable_enum(native_operand(w), n, m, combos, rows)


def _tiled(fn):
    def run(w: torch.Tensor, n: int, m: int) -> torch.Tensor:
        return from_tiles(fn(to_tiles(scores(w), m), n, m), w.shape, m)
    return run


enum_op.register("torch")(_tiled(_enum.enum_tiles))
exact_op.register("torch")(_tiled(lambda s, n, m: _batched.exact(s, n)))
APPROX_EXACT_MAX_N = 2  # same rule as csrc: exchange search is weakest, and exact cheap, for n <= 2


def _approx_torch(s: torch.Tensor, n: int, m: int) -> torch.Tensor:
    if n <= APPROX_EXACT_MAX_N:
        return _batched.exact(s, n)
    return _batched.exchange(_batched.repair(_batched.greedy(s, n), s, n), s, n, _batched.EXCHANGE_PASSES)


approx_op.register("torch")(_tiled(_approx_torch))
greedy_op.register("torch")(_tiled(lambda s, n, m: _batched.repair(_batched.greedy(s, n), s, n)))
flow_ref = _tiled(_flow.flow_tiles)


def resolve_method(method: str, n: int, m: int, device: torch.device) -> str:
    """The concrete method ``"auto"`` stands for (see module docstring)."""
    if method not in METHODS:
        raise ValueError(f"method: expected one of {', '.join(METHODS)}, got {method!r}")
    if method != "auto":
        return method
    if _enum.enumerable(n, m):
        return "exact"
    probe = torch.empty(0, device=device)
    return "exact" if exact_op.choose(probe, n, m).backend != "torch" else "approx"


def solve(w: torch.Tensor, n: int, m: int, method: str) -> torch.Tensor:
    """Concrete ``method`` on a weight ``w [R, C]`` whose sides divide by m -> bool ``[R, C]``."""
    if method == "flow":
        return flow_ref(w, n, m)
    if method == "exact":
        return enum_op(w, n, m) if _enum.enumerable(n, m) else exact_op(w, n, m)
    if method == "greedy":
        return greedy_op(w, n, m)
    if method == "approx":
        # Enumeration is exact and faster than the heuristic wherever it applies (e.g. 2:4).
        return enum_op(w, n, m) if _enum.enumerable(n, m) else approx_op(w, n, m)
    raise ValueError(f"method: expected one of {', '.join(METHODS)}, got {method!r}")


def transposable_mask(weight: torch.Tensor, n: int, m: int, method: str = "auto", *,
                      pad: bool = False) -> torch.Tensor:
    """Transposable N:M mask of a 2-D weight.

    Args:
        weight: ``[out_features, in_features]`` float tensor, CPU or CUDA. fp64 is solved in fp64 and
            every other float dtype in fp32 (exact for fp16/bf16/float8), on every backend alike.
        n, m: every aligned ``m x m`` tile keeps exactly ``n`` per row and column; ``1 <= n < m <= 32``.
        method: ``"auto"``, ``"exact"``, ``"approx"``, ``"greedy"`` or ``"flow"`` (module docstring).
        pad: allow sizes not divisible by ``m`` (tails treated as zero-padded, mask cropped).

    Returns:
        ``torch.bool`` tensor of ``weight``'s shape on ``weight``'s device. Deterministic, including
        under ties, and the same on every backend (csrc CPU/CUDA and pure torch run the same steps
        in the same precision with the same tie rules).
    """
    weight = check_weight(weight)
    n, m = check_nm(n, m)
    if not isinstance(method, str) or method not in METHODS:
        raise ValueError(f"method: expected one of {', '.join(METHODS)}, got {method!r}")
    rows, cols = weight.shape
    w = pad_to_multiple(weight, m, (0, 1), pad)
    concrete = resolve_method(method, n, m, w.device)
    mask = solve(w.detach(), n, m, concrete)
    return mask[:rows, :cols].contiguous()
