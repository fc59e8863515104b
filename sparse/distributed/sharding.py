"""Where a sharded weight's mask can be computed: on each rank's own shard, or only on the gathered weight.

FSDP2 (``torch.distributed.fsdp.fully_shard``) turns each parameter into a ``DTensor``; by default it
is ``Shard(0)`` (rows of ``[out_features, in_features]``, ``torch.chunk`` semantics: every rank holds
``ceil(rows / ranks)`` rows, the last ones fewer or none) on a 1-D mesh, ``(Replicate(), Shard(0))`` on
an HSDP mesh, and ``shard_placement_fn`` may pick another dimension. A mask is a function of the whole
weight; whether each rank can compute its own part from its own shard depends on the pattern:

* N:M along the input dimension: groups are ``m`` consecutive entries of a row, so any row split keeps
  them whole; a column split (``Shard(1)``) does when every shard's column offset and width divide by m.
* transposable N:M: aligned ``m x m`` tiles must not straddle a shard boundary: each sharded dimension's
  chunk size (hence every offset and every shard's extent) must be a multiple of ``m``.
* unstructured and block patterns rank the whole weight (one global threshold): never shard-local.

A weight whose placements are all ``Replicate`` holds the whole weight on every rank: computed locally.
The decision depends only on the global shape, the mesh shape and the placements, so every rank makes
the same one (a rank that gathered while another did not would hang in the collective).
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass

import torch

from ..pruning.patterns import NMPattern, TransposableNMPattern

__all__ = ["is_dtensor", "local", "MaskPlan", "plan_mask", "plan_layout", "like", "from_local", "global_count", "sum_over_shards",
           "mesh_all_true"]


def is_dtensor(t) -> bool:
    """True when ``t`` is a ``torch.distributed.tensor.DTensor`` (False where torch.distributed is missing)."""
    mod = sys.modules.get("torch.distributed.tensor")  # a DTensor cannot exist before its module is loaded
    return mod is not None and isinstance(t, mod.DTensor)


def local(t: torch.Tensor) -> torch.Tensor:
    """The rank's local tensor of a DTensor (a view of its storage: in-place ops write the DTensor), else
    ``t``. Read it again after FSDP's lazy init, which may re-point the local tensor (never cache it)."""
    if is_dtensor(t):
        with torch.no_grad():
            return t.to_local()
    return t


@dataclass(frozen=True)
class MaskPlan:
    """How one sharded weight's masks are computed.

    Attributes:
        shard_local: True: each rank computes the mask of its own shard (no communication); False: the
            weight is all-gathered for the mask computation only and each rank keeps its shard of the mask.
        reason: why the weight must be gathered ("" when shard-local).
        placements: ``str`` of the weight's placements (reports).
    """
    shard_local: bool
    reason: str
    placements: str

    def describe(self) -> str:
        return "shard-local" if self.shard_local else f"gathered ({self.reason})"


def _chunk(length: int, parts: int) -> int:
    """Rows (or columns) per shard under ``torch.chunk`` semantics."""
    return math.ceil(length / parts) if parts else length


def plan_mask(weight, pattern) -> MaskPlan:
    """The :class:`MaskPlan` of a DTensor ``weight`` under ``pattern`` (a :mod:`sparse.pruning.patterns`
    object): :func:`plan_layout` of its global shape, mesh shape and placements (the same on every rank).

    Raises:
        ValueError: for a placement a parameter cannot have (``Partial``).
    """
    return plan_layout(tuple(weight.shape), tuple(weight.device_mesh.shape), tuple(weight.placements), pattern)


def plan_layout(shape: tuple[int, ...], mesh_shape: tuple[int, ...], placements: tuple, pattern) -> MaskPlan:
    """Whether masks of ``pattern`` for a weight of global ``shape`` laid out with ``placements`` (one per
    mesh dimension, sizes ``mesh_shape``; ``torch.chunk`` sharding) can be computed shard by shard with
    the same result as on the whole weight. Pure: no communication, no tensors.

    Raises:
        ValueError: for a ``Partial`` placement (partial sums cannot hold a mask).
    """
    from torch.distributed.tensor import Replicate, Shard

    shape, placements = tuple(int(s) for s in shape), tuple(placements)
    text = f"{list(placements)} on a mesh of shape {tuple(mesh_shape)}"
    split = {}  # tensor dim -> number of shards along it
    for mesh_dim, p in enumerate(placements):
        if isinstance(p, Replicate):
            continue
        if type(p) is not Shard:  # Partial, _StridedShard, custom: not a layout a mask can follow locally
            if p.is_partial():
                raise ValueError(f"weight: placement {p} (partial sums) cannot hold a mask; expected Shard or "
                                 f"Replicate placements, got {text}")
            return MaskPlan(False, f"placement {p} is not a plain Shard", text)
        d = p.dim % len(shape)
        if d in split:
            return MaskPlan(False, f"dimension {d} is sharded over several mesh dimensions", text)
        split[d] = int(mesh_shape[mesh_dim])
    split = {d: parts for d, parts in split.items() if _chunk(shape[d], parts) < shape[d]}  # 1 shard: whole
    if not split:
        return MaskPlan(True, "", text)
    if len(shape) != 2 and any(d != 0 for d in split):
        return MaskPlan(False, f"a rank-{len(shape)} weight sharded along dimension {max(split)} splits the "
                               f"flattened input dimension", text)
    if not isinstance(pattern, (NMPattern, TransposableNMPattern)):
        return MaskPlan(False, f"pattern {pattern.describe()} ranks the whole weight", text)
    m = pattern.m
    need = {1} | ({0} if isinstance(pattern, TransposableNMPattern) else set())  # dims whose split must align
    for d, parts in sorted(split.items()):
        c = _chunk(shape[d], parts)
        if d in need and c % m:
            what = "rows" if d == 0 else "columns"
            unit = "m x m tiles" if isinstance(pattern, TransposableNMPattern) else "groups of m"
            return MaskPlan(False, f"{parts} shards of {c} {what} of weight {list(shape)}: {c} is not a multiple of "
                                   f"m={m}, so {unit} straddle shard boundaries", text)
    return MaskPlan(True, "", text)


def like(t: torch.Tensor, ref) -> torch.Tensor:
    """``t`` as a DTensor with ``ref``'s mesh and placements (``ref`` a DTensor).

    ``t``: a DTensor (redistributed when its layout differs; same mesh) or a plain tensor of ``ref``'s
    global shape (every rank holds the whole tensor, e.g. a single-process checkpoint: each rank keeps
    its own shard, no communication)."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if isinstance(t, DTensor):
        if t.device_mesh == ref.device_mesh and tuple(t.placements) == tuple(ref.placements):
            return t
        return t.redistribute(ref.device_mesh, ref.placements)
    return distribute_tensor(t.to(ref.device), ref.device_mesh, ref.placements, src_data_rank=None)


def from_local(local_tensor: torch.Tensor, ref) -> torch.Tensor:
    """A DTensor with ``ref``'s global shape, mesh and placements whose local part is ``local_tensor``
    (this rank's shard, of ``ref.to_local()``'s shape)."""
    from torch.distributed.tensor import DTensor

    return DTensor.from_local(local_tensor, ref.device_mesh, ref.placements, shape=ref.shape,
                              stride=ref.stride(), run_check=False)


def _shard_dims(t) -> list[int]:
    from torch.distributed.tensor import Shard

    return [i for i, p in enumerate(t.placements) if isinstance(p, Shard)]


def sum_over_shards(n: int, ref) -> int:
    """A per-rank count ``n`` of DTensor ``ref``'s local shard summed over its shards (replicas once)."""
    t = torch.tensor([int(n)], dtype=torch.int64)
    mesh = ref.device_mesh
    for d in _shard_dims(ref):
        torch.distributed.all_reduce(t, group=mesh.get_group(d))
    return int(t)


def global_count(t: torch.Tensor) -> int:
    """Number of True entries of a bool tensor; for a DTensor summed over its shards (replicas once)."""
    n = int(local(t).sum())
    return sum_over_shards(n, t) if is_dtensor(t) else n


def mesh_all_true(flag: bool, ref) -> bool:
    """``flag`` AND-ed over every rank of DTensor ``ref``'s mesh (every rank gets the same answer)."""
    v = torch.tensor([1 if flag else 0], dtype=torch.int64)
    mesh = ref.device_mesh
    for d in range(mesh.ndim):
        torch.distributed.all_reduce(v, op=torch.distributed.ReduceOp.MIN, group=mesh.get_group(d))
    return bool(int(v))
