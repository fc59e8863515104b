"""Initial importance scores of heads, rows and blocks, so that ``one_shot`` means something untrained.

A *unit* (one head of a layer, one row of a matrix, one block) owns weights in one or more matrices,
each a :class:`Member`: a head owns ``head_dim`` rows of Q, K and V and the matching columns of the
attention-output matrix; an FFN intermediate neuron owns a row of FC1 and a column of FC2; an
attention-output or FFN-output row owns one row; a block owns its ``R x C`` weights.

* ``magnitude``: the mean ``|w|`` over the unit's weights.
* ``first-order`` (Taylor): ``|sum over the unit of w * dL/dw|`` per calibration batch, averaged over
  batches, divided by the unit's weight count: the first-order estimate of the loss change when the
  unit is removed (Molchanov et al., 2019).

Scores of one threshold are divided by their mean, so every score vector starts around 1 whatever the
layer's weight scale and ``score_lr`` means the same everywhere. Ties keep the lower index.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

import torch

__all__ = ["Member", "unit_sums", "magnitude_scores", "first_order_scores", "default_loss", "normalise", "unit_count"]

log = logging.getLogger(__name__)

HOW = ("rows", "cols", "blocks")


@dataclass(frozen=True)
class Member:
    """The part of one matrix a unit vector owns: ``how`` = ``rows`` (``group`` consecutive rows per
    unit), ``cols`` (``group`` consecutive columns per unit) or ``blocks`` (``block`` = (R, C))."""
    matrix: tuple[int, str]   # (layer index, role)
    how: str
    group: int = 1
    block: tuple[int, int] = (1, 1)

    def __post_init__(self):
        if self.how not in HOW:
            raise ValueError(f"how: expected one of {', '.join(HOW)}, got {self.how!r}")


def unit_sums(values: torch.Tensor, member: Member, units_shape: tuple[int, ...]) -> tuple[torch.Tensor, int]:
    """Per-unit sums of ``values`` (``[rows, cols]``) and the number of weights each unit owns here.

    Returns ``(sums of units_shape, count)``.
    """
    rows, cols = values.shape
    count = unit_count(member, (rows, cols))
    if member.how == "rows":
        return values.reshape(units_shape[0], member.group, cols).sum((1, 2)), count
    if member.how == "cols":
        return values.reshape(rows, units_shape[0], member.group).sum((0, 2)), count
    br, bc = member.block
    return values.reshape(rows // br, br, cols // bc, bc).sum((1, 3)), count


def unit_count(member: Member, shape: tuple[int, int]) -> int:
    """How many weights of a ``shape`` matrix one unit owns through ``member``."""
    if member.how == "rows":
        return member.group * shape[1]
    if member.how == "cols":
        return member.group * shape[0]
    return member.block[0] * member.block[1]


def normalise(scores: torch.Tensor) -> torch.Tensor:
    """``scores / mean(scores)`` (ones when the mean is 0 or not finite), float32."""
    s = scores.float()
    mean = s.mean()
    if not torch.isfinite(mean) or float(mean) <= 0:
        return torch.ones_like(s)
    return s / mean


def magnitude_scores(units: Mapping[str, tuple[tuple[int, ...], list[Member]]],
                     weight_of: Callable[[tuple[int, str]], torch.Tensor]) -> dict[str, torch.Tensor]:
    """Mean ``|w|`` per unit. ``units``: key -> (scores shape, members); ``weight_of(matrix)``: the raw
    (unmasked) ``[rows, cols]`` weight."""
    out = {}
    with torch.no_grad():
        for key, (shape, members) in units.items():
            total = torch.zeros(shape, dtype=torch.float32, device=weight_of(members[0].matrix).device)
            count = 0
            for m in members:
                s, c = unit_sums(weight_of(m.matrix).detach().float().abs(), m, shape)
                total += s
                count += c
            out[key] = normalise(total / max(count, 1))
    return out


def default_loss(model: torch.nn.Module, batch: Mapping[str, Any]) -> torch.Tensor:
    """``model(**batch).loss`` (the batch carries ``labels``)."""
    loss = getattr(model(**batch), "loss", None)
    if loss is None:
        raise ValueError("calibration: the model returned no loss for a batch; include labels in the batches or "
                         "pass loss_fn(model, batch) -> scalar")
    return loss


def first_order_scores(units: Mapping[str, tuple[tuple[int, ...], list[Member]]],
                       weight_of: Callable[[tuple[int, str]], torch.Tensor], model: torch.nn.Module,
                       calibration: Iterable[Mapping[str, Any]],
                       loss_fn: Callable[[torch.nn.Module, Mapping[str, Any]], torch.Tensor] | None = None
                       ) -> dict[str, torch.Tensor]:
    """Taylor importance ``|sum_unit w * dL/dw|`` averaged over ``calibration`` batches (dicts of model
    inputs). Gradients come from ``torch.autograd.grad``: the model's ``.grad`` fields are untouched."""
    loss_fn = loss_fn or default_loss
    matrices = sorted({m.matrix for _, members in units.values() for m in members})
    weights = [weight_of(mx) for mx in matrices]
    totals = {key: torch.zeros(shape, dtype=torch.float32, device=weights[0].device)
              for key, (shape, _) in units.items()}
    counts = {key: sum(unit_count(m, tuple(weight_of(m.matrix).shape)) for m in members)
              for key, (_, members) in units.items()}
    n = 0
    for batch in calibration:
        loss = loss_fn(model, batch)
        grads = torch.autograd.grad(loss, weights, allow_unused=True)
        wg = {mx: (w.detach().float() * g.float() if g is not None else torch.zeros_like(w, dtype=torch.float32))
              for mx, w, g in zip(matrices, weights, grads)}
        for key, (shape, members) in units.items():
            s = sum(unit_sums(wg[m.matrix], m, shape)[0] for m in members)
            totals[key] += s.abs()
        n += 1
    if n == 0:
        raise ValueError("calibration: expected at least one batch for the first-order scorer, got none")
    log.info("first-order scores from %d calibration batches", n)
    return {key: normalise(totals[key] / n / max(counts[key], 1)) for key in units}
