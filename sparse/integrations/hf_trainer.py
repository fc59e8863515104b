"""Prune during a Hugging Face ``Trainer`` run: ``Trainer(..., callbacks=[SparseTrainerCallback(recipe)])``.

The callback does what :class:`sparse.SparseOptimizer` does, around the Trainer's own optimizer step:
``on_train_begin`` builds a ``SparseOptimizer`` view over the Trainer's model and optimizer (without
replacing or patching either), ``on_pre_optimizer_step`` masks gradients (or applies SR-STE),
``on_optimizer_step`` advances the schedule, refreshes masks and re-masks the weights.
Needs transformers >= 4.40 (``on_pre_optimizer_step``). Caveat: a step the Trainer's fp16 grad
scaler skips still reaches ``on_optimizer_step``, so with fp16 the schedule counts attempted steps
(bf16, the CPU default here, never skips).
"""
from __future__ import annotations

from typing import Any

from transformers import TrainerCallback

from ..optim import SparseOptimizer
from ..recipe import load_recipe

__all__ = ["SparseTrainerCallback"]


class SparseTrainerCallback(TrainerCallback):
    """Args: recipe: a ``Recipe``, YAML path or mapping (validated immediately).

    Attributes:
        sparse: the :class:`SparseOptimizer` built at train begin (``.masks``, ``.report()``,
            ``state_dict()``); ``None`` before training starts.
    """

    def __init__(self, recipe: Any):
        self.recipe = load_recipe(recipe)
        self.sparse: SparseOptimizer | None = None

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        if model is None or optimizer is None:
            raise ValueError("SparseTrainerCallback: the Trainer passed no model/optimizer to on_train_begin "
                             "(expected transformers >= 4.40)")
        if self.sparse is None or self.sparse.optimizer is not optimizer:
            self.sparse = SparseOptimizer(optimizer, model, self.recipe)

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.sparse.pre_step()

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.sparse.post_step()
