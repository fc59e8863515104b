"""Scale-out: ``SparseOptimizer`` on models sharded with FSDP2 (``torch.distributed.fsdp.fully_shard``).

* :mod:`sparse.distributed.sharding` — where a DTensor weight's mask can be computed (its own shard, or
  only the gathered weight) and small collective helpers.
* :mod:`sparse.distributed.targets` — the sharded per-weight state ``SparseOptimizer`` builds for DTensor
  weights (masks and SR-STE shadow weights as DTensors with the weight's placements).
* :mod:`sparse.distributed.checkpoint` — sharded save / resume with ``torch.distributed.checkpoint``
  (same or another number of ranks), and a full Hugging Face folder from a sharded model.

Nothing here is imported by ``import sparse`` beyond the first two (the checkpoint module is loaded on use).
"""
from __future__ import annotations

from .sharding import MaskPlan, is_dtensor, plan_layout, plan_mask

__all__ = ["MaskPlan", "is_dtensor", "plan_layout", "plan_mask", "save_sharded", "load_sharded", "save_full_pretrained"]


def __getattr__(name: str):
    if name in ("save_sharded", "load_sharded", "save_full_pretrained"):
        from . import checkpoint

        return getattr(checkpoint, name)
    raise AttributeError(f"module 'sparse.distributed' has no attribute {name!r}")
