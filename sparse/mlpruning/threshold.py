"""The learnable Top-k threshold of MLPruning (Yao et al., 2021).

One scalar ``t`` per weight matrix and level sets the keep ratio ``r = sigmoid(t)``; the mask keeps the
``K = ceil(r * k)`` largest of ``k`` learnable importance scores (rounded up to a multiple of
``multiple``, at most ``k``). ``t = 10`` keeps everything (``ceil(0.99995 * k) = k`` for ``k < 22,000``).

Backward (straight-through, :class:`TopKMask`), with ``g = dL/dmask``:

* scores: ``dL/dscores = g``, for kept *and* pruned units, so a pruned unit whose gradient says it is
  needed can climb back into the top K;
* threshold, ``grad="paper"``: ``dL/dt = sum(g * mask)``, exactly the reference implementation;
* threshold, ``grad="chain"`` (default): ``dL/dt = sum(g * mask) / K * k * sigmoid'(t)``. ``sum(g *
  mask) / K`` is the average effect of one kept unit, an estimate of ``dL/dK``, and ``dK/dt = k *
  sigmoid'(t)`` is the derivative of the kept count. This is the same quantity the paper uses, put on
  the same scale as the regulariser's gradient (which flows through ``sigmoid(t)`` by ordinary
  autograd), so the two balance at every ``t`` and not only near ``t = 0``. When the loss depends on the
  mask only through the kept count (``L = c * K``), it equals the finite-difference derivative of
  ``L(t)`` (tested); in general it is an estimate, as every straight-through gradient is.

The forward is piecewise constant in both arguments, so no estimator is a true derivative of it.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from .config import THRESHOLD_GRADS

__all__ = ["TopKThreshold", "TopKMask", "keep_count", "threshold_for_count", "topk_mask"]

KEEP_ALL = 10.0   # the initial threshold: keep everything
PRUNE_ALL = -200.0  # sigmoid(-200) == 0 in float32: keeps nothing


def keep_count(threshold: torch.Tensor | float, k: int, multiple: int = 1) -> int:
    """``K = ceil(sigmoid(t) * k)``, rounded up to a multiple of ``multiple`` and capped at ``k``.

    ``sigmoid`` is evaluated in float32 whatever the parameter's dtype, so a count is the same on every
    device and ``t <= -104`` keeps nothing.
    """
    t = threshold.detach().float() if isinstance(threshold, torch.Tensor) else torch.tensor(float(threshold))
    r = float(torch.sigmoid(t.reshape(())).cpu())
    count = math.ceil(r * k)
    if count > 0 and multiple > 1:
        count = math.ceil(count / multiple) * multiple
    return min(count, k)


def threshold_for_count(count: int, k: int) -> float:
    """A threshold ``t`` with ``keep_count(t, k) == count`` (``sigmoid(t) * k == count - 0.5``, far from
    the integer boundaries; ``count == k``: 10, keep all; ``count == 0``: -200, keep none)."""
    if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= k:
        raise ValueError(f"count: expected an integer in [0, {k}], got {count!r}")
    if count == 0:
        return PRUNE_ALL
    if count == k and keep_count(KEEP_ALL, k) == k:
        return KEEP_ALL
    r = (count - 0.5) / k
    return math.log(r / (1.0 - r))


def _order(scores: torch.Tensor) -> torch.Tensor:
    # Descending, stable: among equal scores the lower index is kept (deterministic everywhere).
    return torch.sort(scores.detach().flatten(), descending=True, stable=True).indices


def topk_mask(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Bool mask of ``scores.shape``: the ``count`` largest scores (ties: lower flat index kept)."""
    mask = torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device)
    if count > 0:
        mask[_order(scores)[:count]] = True
    return mask.reshape(scores.shape)


class TopKMask(torch.autograd.Function):
    """``mask = TopKMask.apply(scores, threshold, multiple, grad)``: float mask of ``scores``' shape and
    dtype, 1 for the ``keep_count(threshold, scores.numel(), multiple)`` largest scores. Backward: see
    the module docstring."""

    @staticmethod
    def forward(ctx, scores: torch.Tensor, threshold: torch.Tensor, multiple: int, grad: str):
        k = scores.numel()
        count = keep_count(threshold, k, multiple)
        mask = topk_mask(scores, count).to(scores.dtype)
        ctx.save_for_backward(mask, threshold)
        ctx.k, ctx.count, ctx.grad = k, count, grad
        return mask

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        mask, t = ctx.saved_tensors
        kept_sum = (g * mask).sum()
        if ctx.grad == "paper":
            gt = kept_sum
        else:
            s = torch.sigmoid(t.detach().to(kept_sum.dtype))
            gt = kept_sum * (ctx.k * s * (1.0 - s) / max(ctx.count, 1))
        return g, gt.reshape(t.shape).to(device=t.device, dtype=t.dtype), None, None


class TopKThreshold(nn.Module):
    """A learnable Top-k threshold over ``units`` importance scores.

    Args:
        units: k, how many scores the masks choose from (heads, rows or blocks of one matrix).
        init: the initial threshold t (keep ratio ``sigmoid(t)``; 10 keeps all).
        multiple: kept counts are rounded up to a multiple of this (capped at ``units``).
        grad: ``"chain"`` or ``"paper"``, the threshold's straight-through gradient (module docstring).

    Parameter: ``threshold``, a 0-d float32 tensor. ``forward(scores)`` takes scores of any shape with
    ``units`` elements (float) and returns the float mask of that shape and dtype (differentiable in
    the straight-through sense with respect to both the scores and the threshold).
    """

    def __init__(self, units: int, init: float = KEEP_ALL, multiple: int = 1, grad: str = "chain"):
        super().__init__()
        if isinstance(units, bool) or not isinstance(units, int) or units < 1:
            raise ValueError(f"units: expected an integer >= 1, got {units!r}")
        if isinstance(multiple, bool) or not isinstance(multiple, int) or multiple < 1:
            raise ValueError(f"multiple: expected an integer >= 1, got {multiple!r}")
        if grad not in THRESHOLD_GRADS:
            raise ValueError(f"grad: expected one of {', '.join(THRESHOLD_GRADS)}, got {grad!r}")
        if not isinstance(init, (int, float)) or isinstance(init, bool) or not math.isfinite(init):
            raise ValueError(f"init: expected a finite number, got {init!r}")
        self.units, self.multiple, self.grad = units, multiple, grad
        self.threshold = nn.Parameter(torch.tensor(float(init)))

    def forward(self, scores: torch.Tensor) -> torch.Tensor:
        if not isinstance(scores, torch.Tensor) or scores.numel() != self.units or not scores.is_floating_point():
            got = (f"{scores.dtype} tensor of shape {tuple(scores.shape)}" if isinstance(scores, torch.Tensor)
                   else type(scores).__name__)
            raise ValueError(f"scores: expected a float tensor with {self.units} elements, got {got}")
        return TopKMask.apply(scores, self.threshold, self.multiple, self.grad)

    def keep_ratio(self) -> torch.Tensor:
        """``sigmoid(t)``, 0-d, differentiable (what the regulariser counts)."""
        return torch.sigmoid(self.threshold)

    def count(self) -> int:
        """The number of units the mask keeps now."""
        return keep_count(self.threshold, self.units, self.multiple)

    def hard_mask(self, scores: torch.Tensor) -> torch.Tensor:
        """Bool mask of ``scores.shape`` (no autograd)."""
        return topk_mask(scores, self.count())

    @torch.no_grad()
    def set_count(self, count: int) -> None:
        """Set t so that exactly ``count`` units are kept (``count`` in [0, units]; with ``multiple`` > 1
        the count is rounded up to a multiple first)."""
        if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= self.units:
            raise ValueError(f"count: expected an integer in [0, {self.units}], got {count!r}")
        if count > 0 and self.multiple > 1:
            count = min(self.units, math.ceil(count / self.multiple) * self.multiple)
        self.threshold.fill_(threshold_for_count(count, self.units))

    def extra_repr(self) -> str:
        return f"units={self.units}, multiple={self.multiple}, grad={self.grad!r}, kept={self.count()}"
