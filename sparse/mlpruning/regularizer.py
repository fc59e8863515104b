"""The remaining-weight fraction p and MLPruning's adaptive regulariser towards the target T.

**p** (:func:`expected_weights` / reference count): every encoder Linear matrix counts
``rows * cols * r_row * r_col * r_block`` weights, where each r is the keep ratio ``sigmoid(t)`` of the
threshold that prunes that dimension of *this* matrix, or 1. The products are what make removed heads
and rows shrink matrices downstream: a pruned head removes ``head_dim`` rows of Q, K and V *and* the
matching columns of the attention-output matrix (``r_col`` of that matrix is the head ratio); a pruned
FFN intermediate neuron removes a row of FC1 *and* a column of FC2. ``p`` is that sum over all six
matrices of all layers (matrices no level prunes count in full) divided by the encoder's dense Linear
weight count (biases excluded, as in the paper). :meth:`MLPruner.remaining_fraction
<sparse.mlpruning.MLPruner.remaining_fraction>` feeds each r in straight-through: its value is the
share the hard count keeps (``ceil`` and ``row_multiple`` rounding included), its gradient that of
``sigmoid(t)``, so R sees the fraction the masks really keep and stops pulling exactly when it reaches T.

**R** (:class:`AdaptiveRegularizer`)::

    R = (p - T)^2   if p > T   else 0
    lambda = lambda_near                                  if R < near_tolerance
             max(lambda_max * R / (1 - T)^2, lambda_min)  otherwise
    loss term = lambda * R      (lambda is a number, not differentiated)

``R / (1 - T)^2`` is 1 at the start (p = 1) and falls as p nears T, so the pull is strongest far from
the target and relaxes close to it; within ``sqrt(near_tolerance)`` of T (1.7 points by default) the
weight drops to ``lambda_near`` and the task loss decides the last points. Defaults (the paper's
head/row runs): ``lambda_max = 20000``, ``lambda_min = 50``, ``lambda_near = 10``,
``near_tolerance = 3e-4``. T = 1 disables the term.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

__all__ = ["AdaptiveRegularizer", "MatrixCount", "expected_weights"]


@dataclass(frozen=True)
class MatrixCount:
    """One encoder matrix for the count: its current ``rows x cols`` and the threshold keys that prune
    its rows, columns and blocks (None: that dimension is not pruned)."""
    rows: int
    cols: int
    row_unit: str | None = None
    col_unit: str | None = None
    block_unit: str | None = None


def expected_weights(matrices: list[MatrixCount], ratios: dict[str, torch.Tensor]) -> torch.Tensor:
    """``sum(rows * cols * r_row * r_col * r_block)`` over ``matrices`` (0-d, float32 or the ratios'
    wider dtype, differentiable in ``ratios``: 0-d keep ratios keyed by threshold)."""
    first = next(iter(ratios.values()), None)
    device = first.device if first is not None else None
    dtype = torch.promote_types(first.dtype, torch.float32) if first is not None else torch.float32
    total = torch.zeros((), dtype=dtype, device=device)
    for m in matrices:
        term = torch.tensor(float(m.rows * m.cols), dtype=dtype, device=device)
        for unit in (m.row_unit, m.col_unit, m.block_unit):
            if unit is not None:
                term = term * ratios[unit].to(dtype)
        total = total + term
    return total


@dataclass
class AdaptiveRegularizer:
    """``lambda * R(p)`` towards ``target`` (module docstring). ``last`` holds the latest p, R, lambda."""
    target: float
    lambda_max: float = 20000.0
    lambda_min: float = 50.0
    lambda_near: float = 10.0
    near_tolerance: float = 3e-4
    last: dict = field(default_factory=dict)

    def __post_init__(self):
        t = self.target
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or not 0.0 < t <= 1.0:
            raise ValueError(f"target: expected a remaining fraction in (0, 1], got {t!r}")
        for name in ("lambda_max", "lambda_min", "lambda_near", "near_tolerance"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ValueError(f"{name}: expected a finite number >= 0, got {v!r}")

    def penalty(self, p: torch.Tensor) -> torch.Tensor:
        """``R = relu(p - T)^2`` (0-d, differentiable)."""
        return torch.relu(p - self.target) ** 2

    def weight(self, r: float) -> float:
        """The adaptive lambda for a penalty value ``r``."""
        if self.target >= 1.0:
            return 0.0
        if r < self.near_tolerance:
            return float(self.lambda_near)
        return max(self.lambda_max * r / (1.0 - self.target) ** 2, float(self.lambda_min))

    def __call__(self, p: torch.Tensor) -> torch.Tensor:
        """``lambda * R(p)``: a 0-d float32 tensor, differentiable in ``p``."""
        r = self.penalty(p)
        lam = self.weight(float(r.detach()))
        self.last = {"p": float(p.detach()), "R": float(r.detach()), "lambda": lam, "target": self.target}
        return r * lam
