"""SR-STE (Zhou et al., ICLR 2021): sparse-refined straight-through gradient.

The forward uses the masked weight; the gradient w.r.t. the masked weight is passed straight through
to the dense weight, plus a decay ``lam * (~mask) * W`` that pulls pruned weights towards zero so
masks settle but can still change.
"""
from __future__ import annotations

import torch


@torch.no_grad()
def srste_grad_(grad: torch.Tensor, dense_weight: torch.Tensor, mask: torch.Tensor, lam: float) -> torch.Tensor:
    """In place: ``grad += lam * (~mask) * dense_weight`` (all ``[out, in]``; grad/weight same dtype)."""
    grad.add_(dense_weight.masked_fill(mask, 0), alpha=lam)
    return grad
