"""Sharded checkpoints of a model and its ``SparseOptimizer`` with ``torch.distributed.checkpoint`` (DCP).

Each rank writes its own shards (weights, optimizer moments, masks and SR-STE dense weights are DTensors
under FSDP2); a checkpoint loads on the same or another number of ranks, or into an ordinary
single-process model (DCP reshards on load). Layout of the saved state dict::

    {"model": get_model_state_dict(model), "optimizer": sparse_optimizer.state_dict()}

``sparse_optimizer.state_dict()["optimizer"]`` is the wrapped optimizer's own ``state_dict()`` (states
keyed by parameter index, as ``torch.save`` checkpoints have them), so the optimizer must be built over
the same parameters in the same order as the one that saved.

DCP loads *into* a state dict of the right structure. The structure of the sparse part depends on the
saved step (which layers had masks by then), so :func:`load_sharded` reads the saved step first, builds
:meth:`sparse.SparseOptimizer.state_dict_template` for it, and makes sure the wrapped optimizer's
per-weight state exists (a fresh optimizer has none, and DCP would silently load nothing into it).
"""
from __future__ import annotations

import logging
import os
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
import torch.nn as nn
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                     get_optimizer_state_dict, set_model_state_dict)

__all__ = ["save_sharded", "load_sharded", "saved_step", "save_full_pretrained"]

log = logging.getLogger(__name__)


def _check(model: Any, sparse_optimizer: Any) -> None:
    from ..optim import SparseOptimizer

    if not isinstance(model, nn.Module):
        raise ValueError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(sparse_optimizer, SparseOptimizer):
        raise ValueError(f"sparse_optimizer: expected a sparse.SparseOptimizer, got {type(sparse_optimizer).__name__}")


def save_sharded(checkpoint_id: str | os.PathLike, model: nn.Module, sparse_optimizer) -> None:
    """Write ``model`` and ``sparse_optimizer`` as a DCP checkpoint folder (every rank calls it; each rank
    writes its shards). Collective.

    Args:
        checkpoint_id: the folder (created; DCP overwrites files of an earlier checkpoint in it).
        model: the (FSDP2-sharded or ordinary) model the optimizer prunes.
        sparse_optimizer: its :class:`sparse.SparseOptimizer`.
    """
    _check(model, sparse_optimizer)
    state = {"model": get_model_state_dict(model), "optimizer": sparse_optimizer.state_dict()}
    dcp.save(state, checkpoint_id=os.fspath(checkpoint_id))


def saved_step(checkpoint_id: str | os.PathLike) -> int:
    """The optimizer step a :func:`save_sharded` checkpoint was written at (reads one value)."""
    probe = {"optimizer": {"sparse": {"step": -1}}}
    dcp.load(probe, checkpoint_id=os.fspath(checkpoint_id))
    step = probe["optimizer"]["sparse"]["step"]
    if type(step) is not int or step < 0:
        raise ValueError(f"checkpoint_id: {os.fspath(checkpoint_id)} holds step {step!r}, expected an integer >= 0")
    return step


def load_sharded(checkpoint_id: str | os.PathLike, model: nn.Module, sparse_optimizer) -> None:
    """Resume ``model`` and ``sparse_optimizer`` from a :func:`save_sharded` folder, on any number of ranks
    (or one process without ``torch.distributed``). Collective when distributed.

    The model's weights are loaded first, then :meth:`sparse.SparseOptimizer.load_state_dict` checks and
    loads masks, schedule clock and the wrapped optimizer's state (all or nothing for that part).

    Raises:
        ValueError: the folder holds no such checkpoint, or the state does not fit (see ``load_state_dict``);
            ``sparse.recipe.RecipeError`` when it was saved under another pruning recipe.
    """
    _check(model, sparse_optimizer)
    path = os.fspath(checkpoint_id)
    if not os.path.isdir(path):
        raise ValueError(f"checkpoint_id: expected a folder written by save_sharded, got {path!r} (not a folder)")
    step = saved_step(path)
    # DCP fills the structure it is given: the wrapped optimizer's per-weight state must exist (torch's
    # state-dict helper initialises it with a zero-lr step on zero gradients, the weights unchanged)
    get_optimizer_state_dict(model, sparse_optimizer.optimizer)
    state = {"model": get_model_state_dict(model), "optimizer": sparse_optimizer.state_dict_template(step)}
    dcp.load(state, checkpoint_id=path)
    set_model_state_dict(model, state["model"])
    sparse_optimizer.load_state_dict(state["optimizer"])
    log.info("resumed %s at step %d", path, step)


def save_full_pretrained(model: nn.Module, out_dir: str | os.PathLike, **save_kwargs) -> bool:
    """Write an ordinary (full, unsharded) Hugging Face folder of an FSDP2-sharded ``model`` with
    ``model.save_pretrained(out_dir, state_dict=...)`` on rank 0: the weights are gathered shard by shard
    to rank 0's CPU memory (``full_state_dict=True, cpu_offload=True``). Collective; every rank calls it.

    Returns:
        True on the rank that wrote the folder (rank 0), False elsewhere.
    """
    if not hasattr(model, "save_pretrained"):
        raise ValueError(f"model: expected a transformers PreTrainedModel (save_pretrained), got {type(model).__name__}")
    sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    dist = torch.distributed
    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    if rank == 0:
        model.save_pretrained(os.fspath(out_dir), state_dict=sd, **save_kwargs)
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
    return rank == 0
