"""The MLPruning configuration: a strict dataclass loaded from a mapping (a recipe's ``mlpruning:`` block).

No torch here, so that :mod:`sparse.recipe` can embed :class:`MLPruningConfig` without importing it.
Every unknown key or bad value raises :class:`~sparse.recipe.RecipeError` (a ``ValueError``) naming the
key, what is allowed and what was given. Example (YAML)::

    mlpruning:
      levels: [heads, rows]        # heads | rows | blocks (blocks: usually a second stage)
      target: 0.5                  # remaining fraction of the encoder's Linear weights
      rows: [attn_out, ffn_in, ffn_out]
      scorer: magnitude            # or first-order (needs calibration batches)
      row_multiple: 32             # kept rows rounded up to a multiple (so 32x32 blocks fit later)
      lambda_max: 20000            # adaptive regulariser weights (see sparse.mlpruning.regularizer)
      threshold_lr: 0.05
      distill: {hidden_mse: 1.0}   # hidden-state MSE on top of the recipe's distill block (KL)
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import numbers
from dataclasses import dataclass
from typing import Any, Mapping

from ..recipe import RecipeError, _build, _check, _choice, _float, _int

__all__ = ["MLPruningConfig", "DistillOptions", "LEVELS", "MATRICES", "ROW_MATRICES", "SCORERS",
           "THRESHOLD_GRADS", "RecipeError"]

LEVELS: tuple[str, ...] = ("heads", "rows", "blocks")
# The six Linear matrices of one encoder layer, by role (families.py maps them to module names).
MATRICES: tuple[str, ...] = ("query", "key", "value", "attn_out", "ffn_in", "ffn_out")
# Matrices whose output rows the ``rows`` level prunes (the paper's O, FC1 and FC2 rows).
ROW_MATRICES: tuple[str, ...] = ("attn_out", "ffn_in", "ffn_out")
SCORERS: tuple[str, ...] = ("magnitude", "first-order")
THRESHOLD_GRADS: tuple[str, ...] = ("chain", "paper")


def _subset(allowed: tuple[str, ...], *, nonempty: bool = True):
    def check(v: Any, key: str) -> tuple[str, ...]:
        if isinstance(v, str):
            v = [v]
        if not isinstance(v, (list, tuple)) or (nonempty and not v):
            raise RecipeError(f"{key}: expected a {'non-empty ' if nonempty else ''}list of "
                              f"{', '.join(allowed)}, got {v!r}")
        out = []
        for x in v:
            _choice(x, key, allowed)
            if x in out:
                raise RecipeError(f"{key}: {x!r} listed twice")
            out.append(x)
        return tuple(x for x in allowed if x in out)  # canonical order: equal configs compare equal
    return check


def _block(v: Any, key: str) -> tuple[int, int]:
    if isinstance(v, numbers.Integral) and not isinstance(v, bool):
        v = [v, v]
    if not isinstance(v, (list, tuple)) or len(v) != 2:
        raise RecipeError(f"{key}: expected [rows, cols] (or one integer for a square block), got {v!r}")
    return _int(v[0], f"{key}[0]", 1), _int(v[1], f"{key}[1]", 1)


@dataclass(frozen=True)
class DistillOptions:
    """Distillation extras of MLPruning. The KL term (teacher, ``alpha``, ``temperature``) is the
    recipe's top-level ``distill`` block; this adds ``hidden_mse`` times the mean squared error between
    the student's and the teacher's hidden states (embeddings and every layer output; the residual width
    is never pruned, so the shapes match)."""
    hidden_mse: float = 1.0

    @classmethod
    def from_dict(cls, d: Any, where: str) -> "DistillOptions":
        return _build(cls, d, where, {"hidden_mse": _check(_float, 0.0)})


def _distill(v: Any, key: str) -> "DistillOptions | None":
    return None if v is None else DistillOptions.from_dict(v, key)


@dataclass(frozen=True)
class MLPruningConfig:
    """What :class:`sparse.mlpruning.MLPruner` prunes and how.

    Attributes:
        levels: any of ``heads`` (Q/K/V share one score per head; the attention-output matrix loses the
            matching columns), ``rows`` (output rows of the matrices in ``rows``; see
            :mod:`sparse.mlpruning.pack` for what that means physically), ``blocks`` (``block``-sized
            blocks of the matrices in ``block_matrices``; meant as a second stage on a packed
            head/row model).
        target: T, the remaining fraction of the encoder's Linear weights the regulariser drives to,
            in (0, 1] (1: no pruning pressure). Counted against the original dense model, also in a
            second stage on a packed model (whose config records the dense count).
        rows: which matrices the ``rows`` level prunes: ``attn_out`` (attention output rows),
            ``ffn_in`` (FFN intermediate neurons: FC1 rows and FC2 columns), ``ffn_out`` (FFN output rows).
        block: (rows, cols) of a block, default 32 x 32 (packs to ``BlockSparseLinear`` when square and
            16, 32, 64 or 128).
        block_matrices: which matrices the ``blocks`` level prunes.
        scorer: how importance scores start: ``magnitude`` (mean |w| of a unit's weights) or
            ``first-order`` (|sum w * dL/dw| over calibration batches).
        threshold_init: initial threshold t (keep ratio sigmoid(t); 10 keeps everything).
        threshold_grad: ``chain`` (default) or ``paper``: see :class:`sparse.mlpruning.TopKThreshold`.
        row_multiple: kept heads are whole heads; kept rows are rounded up to a multiple of this
            (e.g. 32, so a later 32x32 block stage divides the packed shapes).
        lambda_max, lambda_min, lambda_near, near_tolerance: the adaptive regulariser weights
            (:class:`sparse.mlpruning.regularizer.AdaptiveRegularizer`).
        score_lr, threshold_lr: learning rates of the importance scores and of the thresholds (their
            own optimizer parameter groups, no weight decay).
        distill: :class:`DistillOptions` or None.
    """
    levels: tuple[str, ...] = ("heads", "rows")
    target: float = 0.5
    rows: tuple[str, ...] = ROW_MATRICES
    block: tuple[int, int] = (32, 32)
    block_matrices: tuple[str, ...] = MATRICES
    scorer: str = "magnitude"
    threshold_init: float = 10.0
    threshold_grad: str = "chain"
    row_multiple: int = 1
    lambda_max: float = 20000.0
    lambda_min: float = 50.0
    lambda_near: float = 10.0
    near_tolerance: float = 3e-4
    score_lr: float = 1e-2
    threshold_lr: float = 1e-2
    distill: DistillOptions | None = None

    def __post_init__(self):
        # Programmatic construction gets the same checks as a recipe (RecipeError is a ValueError).
        _float(self.target, "target", 0.0, 1.0, lo_open=True)
        if not self.levels:
            raise RecipeError(f"levels: expected a non-empty list of {', '.join(LEVELS)}, got {self.levels!r}")

    @classmethod
    def from_dict(cls, d: Any, where: str = "mlpruning") -> "MLPruningConfig":
        """Strict: unknown keys and bad values raise :class:`RecipeError` naming ``where.key``."""
        positive = _check(_float, 0.0, lo_open=True)
        return _build(cls, d, where, {
            "levels": _subset(LEVELS), "target": _check(_float, 0.0, 1.0, lo_open=True),
            "rows": _subset(ROW_MATRICES), "block": _block, "block_matrices": _subset(MATRICES),
            "scorer": _check(_choice, SCORERS), "threshold_init": _check(_float, -50.0, 50.0),
            "threshold_grad": _check(_choice, THRESHOLD_GRADS), "row_multiple": _check(_int, 1, 4096),
            "lambda_max": _check(_float, 0.0), "lambda_min": _check(_float, 0.0),
            "lambda_near": _check(_float, 0.0), "near_tolerance": _check(_float, 0.0),
            "score_lr": positive, "threshold_lr": positive, "distill": _distill}, required=("levels",))

    @classmethod
    def coerce(cls, recipe: Any) -> "MLPruningConfig":
        """An ``MLPruningConfig`` from itself, a mapping, or a :class:`~sparse.recipe.Recipe` with an
        ``mlpruning`` block; anything else raises ``ValueError`` naming ``recipe``."""
        if isinstance(recipe, MLPruningConfig):
            return recipe
        if isinstance(recipe, Mapping):
            return cls.from_dict(recipe)
        block = getattr(type(recipe), "__dataclass_fields__", {}).get("mlpruning")
        if block is not None and isinstance(getattr(recipe, "mlpruning"), MLPruningConfig):
            return recipe.mlpruning
        raise ValueError(f"recipe: expected an MLPruningConfig, a mapping of its keys or a Recipe with an "
                         f"mlpruning block, got {type(recipe).__name__}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def fingerprint(self) -> str:
        """Hash of the whole config: pruner state saved under one config is refused by another."""
        blob = json.dumps(self.to_dict(), sort_keys=True, default=list)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]
