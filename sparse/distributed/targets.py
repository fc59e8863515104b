"""Per-weight state of ``SparseOptimizer`` for weights sharded as DTensors (FSDP2 ``fully_shard``).

The same two kinds as :mod:`sparse.pruning.optim_state` (hard masks; SR-STE), with one difference in
storage: the public ``mask`` is a ``torch.bool`` DTensor with the weight's mesh and placements, and
everything the hot path touches (the float mask, the gradient, the weight, the optimizer's moments)
is the rank's *local* shard, so a step runs the single-process arithmetic on each shard with no
communication and no DTensor dispatch. Mask computation follows :func:`sparse.distributed.sharding.plan_mask`:
shard-local when the pattern's groups/tiles never straddle a shard boundary, else the weight is
all-gathered for the mask computation only (``allow_gather``) and each rank keeps its shard of the mask.

SR-STE's dense shadow weight is a DTensor sharded like the weight. FSDP2 all-gathers parameters from
its own padded buffer, which the parameter's local tensor is a view of, so the single-process trick of
swapping ``param.data`` to the shadow storage would leave FSDP gathering a stale tensor; the shard is
copied instead (two extra copies of the local shard per step).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..pruning.optim_state import MagnitudeTarget, SRSTETarget, tidy_state
from ..pruning.patterns import SparsityPattern
from ..recipe import PruningEntry
from .sharding import MaskPlan, from_local, is_dtensor, like, local, mesh_all_true, plan_mask, sum_over_shards

__all__ = ["ShardedMagnitudeTarget", "ShardedSRSTETarget", "SHARDED_TARGET_CLASSES", "GatherRefused"]


class GatherRefused(ValueError):
    """A pattern cannot be computed shard-locally for a weight's layout and gathering is disabled."""


class _Sharded:
    """Mixin over a target class of :mod:`sparse.pruning.optim_state` for a DTensor ``param``.

    Attributes (besides the base class's): ``plan`` (:class:`MaskPlan`), ``lmask`` the local bool mask,
    ``fmask`` (and SR-STE's ``nfmask``) local float masks, ``revived`` local."""

    def _init_sharded(self, allow_gather: bool, where: str) -> None:
        self.plan: MaskPlan = plan_mask(self.param, self.pattern)
        self.lmask: torch.Tensor | None = None
        if not self.plan.shard_local and not allow_gather:
            raise GatherRefused(
                f"{where}: the {self.pattern.describe()} mask of {self.fqn} cannot be computed shard-locally: "
                f"{self.plan.reason} (placements {self.plan.placements}); pass allow_gather=True to gather "
                f"the weight for the mask computation only, or shard that layer so the pattern's groups stay "
                f"whole")

    # -- masks ---------------------------------------------------------------------------------------
    def compute_mask(self, sparsity: float | None) -> torch.Tensor:
        """The new mask (a bool DTensor of the weight's layout) from :meth:`mask_source`. Collective when
        the plan gathers (every rank must call it)."""
        src = self.mask_source()
        if self.plan.shard_local:
            w = local(src)
            if w.numel() == 0:  # an empty shard (more ranks than chunks)
                lm = torch.ones(w.shape, dtype=torch.bool, device=w.device)
            else:
                lm = self.pattern.mask(w, sparsity)
            return from_local(lm, self.param)
        full = src.full_tensor()  # the only place a whole weight exists, freed on return
        return like(self.pattern.mask(full, sparsity), self.param)

    def mask_valid(self, mask: torch.Tensor, sparsity: float | None) -> bool:
        """Whether ``mask`` (a DTensor of any layout of the weight's mesh, or a whole plain tensor)
        satisfies the pattern; the same answer on every rank."""
        if not is_dtensor(mask):  # a whole mask (e.g. from a single-process checkpoint), the same on every rank
            return bool(self.pattern.valid(mask, sparsity))
        mask = like(mask, self.param)
        if self.plan.shard_local:  # N:M groups / tiles are whole in every shard (or the weight is replicated)
            lm = local(mask)
            return mesh_all_true(lm.numel() == 0 or bool(self.pattern.valid(lm, sparsity)), self.param)
        return bool(self.pattern.valid(mask.full_tensor(), sparsity))

    def weight_outside_mask(self) -> int:
        """Non-zero entries of the forward's weight where the mask prunes, over all shards (0: inside)."""
        if self.lmask is None:
            return 0
        w = self.dense_weight()
        return sum_over_shards(int((local(w).masked_fill(self.lmask, 0) != 0).sum()), w)

    def _set_local(self, mask: torch.Tensor | None, restored: bool) -> torch.Tensor | None:
        """Write the public DTensor mask and the local bool mask; returns the local mask."""
        lm = None if mask is None else local(mask)
        if restored or lm is None or self.lmask is None:
            revived = None
        else:
            revived = lm & ~self.lmask
            if self.revived is not None:
                revived |= self.revived & lm
        self.revived = revived if revived is not None and bool(revived.any()) else None
        self.mask, self.lmask = mask, lm
        return lm

    def state_dict(self) -> dict:
        """``{"mask": bool DTensor, "sparsity"}`` (SR-STE adds ``"dense"``, a DTensor) or ``{}``."""
        if self.mask is None:
            return {}
        return {"mask": from_local(self.lmask.clone(), self.param), "sparsity": self.sparsity}


class ShardedMagnitudeTarget(_Sharded, MagnitudeTarget):
    """:class:`sparse.pruning.optim_state.MagnitudeTarget` for a DTensor weight (module docstring)."""

    def __init__(self, fqn: str, entry: PruningEntry, param: nn.Parameter, pattern: SparsityPattern, *,
                 allow_gather: bool = True, where: str = "model"):
        MagnitudeTarget.__init__(self, fqn, entry, param, pattern)
        self._init_sharded(allow_gather, where)

    def mask_source(self) -> torch.Tensor:
        return self.param.detach()

    def set_mask(self, mask: torch.Tensor | None, sparsity: float | None, *, restored: bool = False) -> None:
        lm = self._set_local(mask, restored)
        self.sparsity = sparsity
        self.fmask = None if lm is None else lm.to(self.param.dtype)
        self.tidy = lm is not None

    def pre_step(self) -> None:
        g = self.param.grad
        if self.fmask is not None and g is not None:
            local(g).mul_(self.fmask)

    def apply_mask(self) -> None:
        if self.fmask is not None:
            local(self.param).mul_(self.fmask)

    def tidy_state(self, state: dict, fill: dict[str, float] | None) -> None:
        # the optimizer's moments of a DTensor weight are DTensors of its layout: tidy their local shards
        if fill is not None and self.tidy and tidy_state({k: local(v) for k, v in state.items()}, fill,
                                                         self.lmask, self.revived):
            self.tidy, self.revived = False, None

    def load_state_dict(self, mask: torch.Tensor | None, sparsity: float | None,
                        dense: torch.Tensor | None = None) -> None:
        self.set_mask(None if mask is None else like(mask, self.param), sparsity, restored=True)
        if mask is not None:
            local(self.param).mul_(self.fmask)


class ShardedSRSTETarget(_Sharded, SRSTETarget):
    """:class:`sparse.pruning.optim_state.SRSTETarget` for a DTensor weight: ``dense`` is a DTensor
    sharded like the weight; the parameter's shard is overwritten (not re-pointed) each step."""

    def __init__(self, fqn: str, entry: PruningEntry, param: nn.Parameter, pattern: SparsityPattern, *,
                 allow_gather: bool = True, where: str = "model"):
        SRSTETarget.__init__(self, fqn, entry, param, pattern)
        self._init_sharded(allow_gather, where)

    def mask_source(self) -> torch.Tensor:
        if self.dense is None:
            self.dense = self.param.detach().clone()
        return self.dense

    def set_mask(self, mask: torch.Tensor | None, sparsity: float | None, *, restored: bool = False) -> None:
        lm = self._set_local(mask, True)
        self.sparsity = sparsity
        self.fmask = None if lm is None else lm.to(self.param.dtype)
        self.nfmask = None if lm is None else (~lm).to(self.param.dtype)

    def pre_step(self) -> None:
        if self.mask is None:
            return
        d = local(self.dense)
        local(self.param).copy_(d)  # the inner optimizer steps the dense weight
        g = self.param.grad
        if g is not None:
            local(g).addcmul_(d, self.nfmask, value=self.lam)  # g += lam * (~mask) * W, fused

    def post_step(self, retidy: bool) -> None:
        if self.dense is not None and self.mask is not None:
            local(self.dense).copy_(local(self.param))  # the dense weight the inner optimizer just updated

    def apply_mask(self) -> None:
        if self.dense is None or self.fmask is None:
            return
        torch.mul(local(self.dense), self.fmask, out=local(self.param))  # the forward sees dense * mask

    def dense_weight(self) -> torch.Tensor:
        return self.param.detach()

    def state_dict(self) -> dict:
        out = _Sharded.state_dict(self)
        if self.dense is not None and out:
            out["dense"] = self.dense.clone()
        return out

    def load_state_dict(self, mask: torch.Tensor | None, sparsity: float | None,
                        dense: torch.Tensor | None = None) -> None:
        self.dense = None if dense is None else like(dense.to(self.param.dtype), self.param).clone()
        self.set_mask(None if mask is None else like(mask, self.param), sparsity, restored=True)
        if mask is not None:
            if self.dense is not None:
                self.apply_mask()
            else:
                local(self.param).mul_(self.fmask)


#: recipe method kind -> target class for DTensor weights
SHARDED_TARGET_CLASSES: dict[str, type[MagnitudeTarget]] = {"magnitude": ShardedMagnitudeTarget,
                                                            "srste": ShardedSRSTETarget}
