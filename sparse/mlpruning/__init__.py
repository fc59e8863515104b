"""MLPruning: multilevel structured pruning of Transformer encoders (Yao et al., 2021).

Attention heads, rows (attention-output, FFN intermediate and FFN output) and weight blocks, each level
with a learnable Top-k threshold per matrix (:class:`TopKThreshold`) and an adaptive regulariser that
drives the remaining fraction of the encoder's Linear weights to a target; :meth:`MLPruner.pack` removes
the pruned parts for real (a smaller, faster model with the same outputs) and :func:`load_packed`
reloads a saved one::

    pruner = MLPruner(model, {"levels": ["heads", "rows"], "target": 0.5})
    opt = torch.optim.AdamW([*model_groups, *pruner.param_groups()])
    loss = task_loss + pruner.regularization_loss()
    ...
    pruner.save_packed("out/")            # or pruner.one_shot(0.5) without training
    small = sparse.mlpruning.load_packed("out/")

Supported families: BERT (incl. MiniLM), RoBERTa, DistilBERT (:mod:`sparse.mlpruning.families`).
Names resolve lazily, so ``sparse.mlpruning.config`` imports without torch.
"""
from __future__ import annotations

import importlib

_LAZY = {
    "MLPruningConfig": "sparse.mlpruning.config",
    "DistillOptions": "sparse.mlpruning.config",
    "TopKThreshold": "sparse.mlpruning.threshold",
    "TopKMask": "sparse.mlpruning.threshold",
    "MLPruner": "sparse.mlpruning.pruner",
    "AdaptiveRegularizer": "sparse.mlpruning.regularizer",
    "RowPrunedLinear": "sparse.mlpruning.pack",
    "HeadlessAttention": "sparse.mlpruning.pack",
    "save_packed": "sparse.mlpruning.io",
    "load_packed": "sparse.mlpruning.io",
    "is_packed_folder": "sparse.mlpruning.io",
    "distill_loss": "sparse.mlpruning.distill",
    "FAMILIES": "sparse.mlpruning.families",
    "family_of": "sparse.mlpruning.families",
}


def __getattr__(name):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'sparse.mlpruning' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = list(_LAZY)
