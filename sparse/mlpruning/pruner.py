"""``MLPruner``: learnable head, row and block masks on a Hugging Face encoder, and their packing.

The masks act through ``torch.nn.utils.parametrize`` on the matrices' ``weight`` (and ``bias`` for
pruned rows): ``W_eff = W * row_mask[:, None] * col_mask[None, :] * block_mask``, recomputed from the
scores and thresholds on every forward, so the masked model *is* the packed model with zeros in place
of the removed parts:

* heads: rows of Q, K, V (and biases) and columns of the attention-output matrix, per head;
* rows: output rows (and biases) of ``attn_out`` / ``ffn_in`` / ``ffn_out``; an ``ffn_in`` row also
  masks the matching FC2 column;
* blocks: ``R x C`` blocks of the weight.

The pruner is an ``nn.Module`` that holds only the learnable scores and thresholds (``units.<key>.scores``
and ``units.<key>.topk.threshold``; keys like ``layer0_heads``, ``layer3_ffn_in_rows``,
``layer5_query_blocks``): the model's own parameters and state-dict keys are the parametrized ones
(``...weight`` reads the masked weight, ``...parametrizations.weight.original`` the stored one) until
:meth:`MLPruner.remove`. Train ``pruner.param_groups()`` next to the model's parameters and add
``pruner.regularization_loss()`` to the loss.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

import torch
import torch.nn as nn
from torch.nn.utils import parametrize

from .config import MLPruningConfig
from .families import Family, encoder_layers, family_of, layer_prefixes
from .pack import LayerPlan, encoder_weight_count, layer_heads, matrix_views, matrix_weight_count, pack_layer
from .regularizer import AdaptiveRegularizer, MatrixCount, expected_weights
from .scorers import Member, first_order_scores, magnitude_scores
from .threshold import TopKThreshold

__all__ = ["MLPruner", "PACKED_KEY"]

log = logging.getLogger(__name__)

PACKED_KEY = "mlpruning"  # the packed model's config attribute (a dict): per-layer shapes and counts
FORMAT_VERSION = 1


class _Unit(nn.Module):
    """The scores of one threshold (``shape``: ``[k]`` for heads/rows, ``[R/b, C/b]`` for blocks)."""

    def __init__(self, shape: tuple[int, ...], topk: TopKThreshold, device):
        super().__init__()
        self.scores = nn.Parameter(torch.ones(shape, dtype=torch.float32, device=device))
        self.topk = topk

    def mask(self) -> torch.Tensor:
        return self.topk(self.scores)

    def hard_mask(self) -> torch.Tensor:
        return self.topk.hard_mask(self.scores)


@dataclass
class _Matrix:
    """One encoder matrix the pruner masks or counts."""
    layer: int
    role: str
    name: str                     # fully qualified module name (messages)
    linear: nn.Linear | None      # the module owning ``weight``/``bias`` (None: not masked, counted only)
    rows: int
    cols: int
    stored: int                   # weights stored now (a BlockSparseLinear: its kept blocks)
    row_unit: str | None = None
    row_group: int = 1
    col_unit: str | None = None
    col_group: int = 1
    block_unit: str | None = None


class _Mask(nn.Module):
    """Parametrization ``w -> w * mask`` with the mask from the pruner (not a registered submodule, so
    the model's parameters never include the pruner's)."""

    def __init__(self, mask_fn: Callable[[], torch.Tensor]):
        super().__init__()
        self.mask_fn = mask_fn

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w * self.mask_fn().to(w.dtype)


class MLPruner(nn.Module):
    """Multilevel structured pruning of a Hugging Face encoder (BERT incl. MiniLM, RoBERTa, DistilBERT).

    Args:
        model: the model (``BertModel``, ``BertForSequenceClassification``, ...; also a model packed by
            an earlier stage). Its matrices are parametrized in place.
        recipe: :class:`~sparse.mlpruning.MLPruningConfig`, a mapping of its keys, or a
            :class:`~sparse.recipe.Recipe` with an ``mlpruning`` block.
        calibration: batches (dicts of model inputs with ``labels``) for ``scorer: first-order``.
        loss_fn: ``loss_fn(model, batch) -> scalar`` for the first-order scorer (default ``.loss``).

    Raises:
        ValueError: unsupported family, a block that does not divide a pruned matrix, a target outside
            (0, 1], a model that is already parametrized or block-packed, ``first-order`` without
            calibration.
    """

    def __init__(self, model: nn.Module, recipe: Any, *, calibration: Iterable[Mapping[str, Any]] | None = None,
                 loss_fn: Callable[[nn.Module, Mapping[str, Any]], torch.Tensor] | None = None):
        super().__init__()
        cfg = MLPruningConfig.coerce(recipe)
        if not isinstance(model, nn.Module):
            raise ValueError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
        self.config = cfg
        self.family: Family = family_of(model)
        object.__setattr__(self, "model", model)  # not a submodule: the pruner's parameters are its own
        config = model.config
        self.head_dim = getattr(config, self.family.hidden_config) // getattr(config, self.family.heads_config)
        self.regularizer = AdaptiveRegularizer(cfg.target, cfg.lambda_max, cfg.lambda_min, cfg.lambda_near,
                                               cfg.near_tolerance)
        self.units = nn.ModuleDict()
        self._matrices: list[_Matrix] = []
        self._members: dict[str, list[Member]] = {}
        self._build(model, cfg)
        if not self.units:
            raise ValueError(f"recipe: levels {list(cfg.levels)} prune nothing in this model (no heads, rows or "
                             f"blocks left to choose from)")
        packed = getattr(config, PACKED_KEY, None)
        self.reference_weights = int(packed["dense_encoder_weights"]) if isinstance(packed, Mapping) else \
            sum(m.stored for m in self._matrices)
        self.init_scores(cfg.scorer, calibration=calibration, loss_fn=loss_fn, attached=False)
        self.register_buffer("fingerprint", self._fingerprint())
        self._attached: list[tuple[nn.Module, str, _Mask]] = []
        self._attach()

    # ------------------------------------------------------------------------------ construction
    def _build(self, model: nn.Module, cfg: MLPruningConfig) -> None:
        fam, d = self.family, self.head_dim
        layers = encoder_layers(model, fam)
        prefixes = layer_prefixes(model, fam)
        device = self._units_device = next(model.parameters()).device  # scores and thresholds live here
        br, bc = cfg.block
        for i, layer in enumerate(layers):
            views = matrix_views(layer, fam)
            mats: dict[str, _Matrix] = {}
            for role, v in views.items():
                name = prefixes[i] + fam.matrices[role]
                masked = isinstance(v.linear, nn.Linear)
                if parametrize.is_parametrized(v.linear):
                    raise ValueError(f"model: {name} is already parametrized (another MLPruner attached? call its "
                                     f"remove() first)")
                mats[role] = _Matrix(i, role, name, v.linear if masked else None, v.rows, v.cols,
                                     matrix_weight_count(v.linear))
            heads = layer_heads(layer, fam, d)
            if "heads" in cfg.levels and heads > 0:
                key = f"layer{i}_heads"
                self._add_unit(key, (heads,), 1, cfg)
                for role in ("query", "key", "value"):
                    self._member(mats[role], key, "rows", d)
                self._member(mats["attn_out"], key, "cols", d)
            if "rows" in cfg.levels:
                for role in cfg.rows:
                    m = mats.get(role)
                    if m is None or m.rows == 0 or m.cols == 0:
                        continue  # a headless layer's attention output has no weights, only a bias
                    key = f"layer{i}_{role}_rows"
                    self._add_unit(key, (m.rows,), min(cfg.row_multiple, m.rows), cfg)
                    self._member(m, key, "rows", 1)
                    if role == "ffn_in":
                        self._member(mats["ffn_out"], key, "cols", 1)
            if "blocks" in cfg.levels:
                for role in cfg.block_matrices:
                    m = mats.get(role)
                    if m is None or m.rows == 0 or m.cols == 0:
                        continue
                    if m.rows % br or m.cols % bc:
                        raise ValueError(f"recipe.block: {br}x{bc} does not divide {m.name} weight [{m.rows}, "
                                         f"{m.cols}]; choose a block that divides every matrix in block_matrices, "
                                         f"leave this matrix out, or round kept rows with row_multiple in the "
                                         f"head/row stage")
                    key = f"layer{i}_{role}_blocks"
                    self._add_unit(key, (m.rows // br, m.cols // bc), 1, cfg)
                    self._member(m, key, "blocks", 1)
            self._matrices.extend(mats.values())
        for m in self._matrices:
            if m.linear is None and (m.row_unit or m.col_unit or m.block_unit):
                raise ValueError(f"model: {m.name} is not an nn.Linear (already block-packed?); MLPruning masks "
                                 f"nn.Linear matrices only")

    def _add_unit(self, key: str, shape: tuple[int, ...], multiple: int, cfg: MLPruningConfig) -> None:
        k = math.prod(shape)
        # the threshold lives with the scores: its straight-through gradient is computed there
        topk = TopKThreshold(k, init=cfg.threshold_init, multiple=multiple,
                             grad=cfg.threshold_grad).to(self._units_device)
        self.units[key] = _Unit(shape, topk, self._units_device)
        self._members[key] = []

    def _member(self, m: _Matrix, key: str, how: str, group: int) -> None:
        if how == "rows":
            m.row_unit, m.row_group = key, group
        elif how == "cols":
            m.col_unit, m.col_group = key, group
        else:
            m.block_unit = key
        self._members[key].append(Member((m.layer, m.role), how, group, tuple(self.config.block)))

    def _fingerprint(self) -> torch.Tensor:
        layout = {k: list(u.scores.shape) for k, u in self.units.items()}
        blob = json.dumps({"config": self.config.fingerprint(), "family": self.family.name, "units": layout},
                          sort_keys=True)
        return torch.tensor(list(hashlib.sha256(blob.encode()).digest()[:16]), dtype=torch.uint8)

    # ------------------------------------------------------------------------------ scores
    def _matrix(self, key: tuple[int, str]) -> _Matrix:
        for m in self._matrices:
            if (m.layer, m.role) == key:
                return m
        raise KeyError(key)

    def _raw_weight(self, key: tuple[int, str]) -> torch.Tensor:
        lin = self._matrix(key).linear
        if parametrize.is_parametrized(lin, "weight"):
            return lin.parametrizations.weight.original
        return lin.weight

    def init_scores(self, scorer: str = "magnitude", *, calibration: Iterable[Mapping[str, Any]] | None = None,
                    loss_fn: Callable[[nn.Module, Mapping[str, Any]], torch.Tensor] | None = None,
                    attached: bool = True) -> None:
        """(Re)initialise every importance score from the current (unmasked) weights.

        Args:
            scorer: ``magnitude`` or ``first-order`` (:mod:`sparse.mlpruning.scorers`).
            calibration, loss_fn: the batches and loss of the first-order scorer.
        """
        units = {k: (tuple(u.scores.shape), self._members[k]) for k, u in self.units.items()}
        if scorer == "magnitude":
            scores = magnitude_scores(units, self._raw_weight)
        elif scorer == "first-order":
            if calibration is None:
                raise ValueError("calibration: the first-order scorer needs calibration batches (dicts of model "
                                 "inputs with labels); pass calibration=... or use scorer magnitude")
            ctx = self._detached() if attached else contextlib.nullcontext()
            with ctx:
                scores = first_order_scores(units, self._raw_weight, self.model, calibration, loss_fn)
        else:
            raise ValueError(f"scorer: expected magnitude or first-order, got {scorer!r}")
        with torch.no_grad():
            for k, s in scores.items():
                self.units[k].scores.copy_(s)

    # ------------------------------------------------------------------------------ masks
    def _row_mask(self, key: str | None, group: int, hard: bool) -> torch.Tensor | None:
        if key is None:
            return None
        u = self.units[key]
        mask = u.hard_mask() if hard else u.mask()
        return mask.repeat_interleave(group) if group > 1 else mask

    def _block_mask(self, key: str | None, hard: bool) -> torch.Tensor | None:
        if key is None:
            return None
        u = self.units[key]
        mask = u.hard_mask() if hard else u.mask()
        br, bc = self.config.block
        return mask.repeat_interleave(br, 0).repeat_interleave(bc, 1)

    def _weight_mask(self, m: _Matrix, hard: bool = False) -> torch.Tensor:
        """``[rows, cols]`` mask of one matrix (float, differentiable; bool when ``hard``)."""
        row = self._row_mask(m.row_unit, m.row_group, hard)
        col = self._row_mask(m.col_unit, m.col_group, hard)
        blk = self._block_mask(m.block_unit, hard)
        dtype = torch.bool if hard else torch.float32
        mask = torch.ones(m.rows, m.cols, dtype=dtype, device=self._units_device)
        if row is not None:
            mask = mask & row[:, None] if hard else mask * row[:, None]
        if col is not None:
            mask = mask & col[None, :] if hard else mask * col[None, :]
        if blk is not None:
            mask = mask & blk if hard else mask * blk
        return mask

    def _attach(self) -> None:
        for m in self._matrices:
            if m.linear is None:
                continue
            if m.row_unit or m.col_unit or m.block_unit:
                self._attached.append((m.linear, "weight", _Mask(lambda m=m: self._weight_mask(m))))
            if m.row_unit and m.linear.bias is not None:
                self._attached.append((m.linear, "bias",
                                       _Mask(lambda m=m: self._row_mask(m.row_unit, m.row_group, False))))
        for mod, name, p in self._attached:
            parametrize.register_parametrization(mod, name, p)

    def _detach(self) -> None:
        for mod, name, _ in self._attached:
            if parametrize.is_parametrized(mod, name):
                parametrize.remove_parametrizations(mod, name, leave_parametrized=False)

    @contextlib.contextmanager
    def _detached(self):
        """The model without masks for the duration (its Parameter objects are kept: optimizers still
        hold them)."""
        self._detach()
        try:
            yield
        finally:
            for mod, name, p in self._attached:
                parametrize.register_parametrization(mod, name, p)

    def remove(self) -> nn.Module:
        """Take the masks off the model for good (it computes densely again, weights untouched)."""
        self._detach()
        self._attached = []
        return self.model

    def hard_masks(self) -> dict[str, torch.Tensor]:
        """Bool mask of every threshold's units, by unit key."""
        with torch.no_grad():
            return {k: u.hard_mask() for k, u in self.units.items()}

    def threshold_parameters(self) -> list[nn.Parameter]:
        return [u.topk.threshold for u in self.units.values()]

    def score_parameters(self) -> list[nn.Parameter]:
        return [u.scores for u in self.units.values()]

    def param_groups(self, score_lr: float | None = None, threshold_lr: float | None = None) -> list[dict]:
        """Optimizer groups: the scores and the thresholds, each with its own learning rate (default: the
        config's ``score_lr`` / ``threshold_lr``) and no weight decay.

        The thresholds' group also sets ``betas = (0.0, 0.999)`` for Adam-type optimizers (others ignore
        the key): no momentum. The regulariser stops pulling once p reaches the target, and momentum would
        carry the thresholds far past it (a tiny BERT aimed at 50% ends at 21% with beta1 = 0.9, at 50%
        without momentum: tests/mlpruning/test_mlp_regularizer.py).
        """
        return [{"params": self.score_parameters(), "lr": score_lr or self.config.score_lr, "weight_decay": 0.0,
                 "name": "mlpruning.scores"},
                {"params": self.threshold_parameters(), "lr": threshold_lr or self.config.threshold_lr,
                 "weight_decay": 0.0, "betas": (0.0, 0.999), "name": "mlpruning.thresholds"}]

    # ------------------------------------------------------------------------------ counting
    def _counts(self) -> list[MatrixCount]:
        return [MatrixCount(m.rows, m.cols, m.row_unit, m.col_unit, m.block_unit) if self._pruned(m)
                else MatrixCount(m.stored, 1) for m in self._matrices]

    def _kept(self, m: _Matrix, masks: dict[str, torch.Tensor]) -> int:
        """Weights of ``m`` the hard masks keep (products of counts unless rows/columns and blocks mix)."""
        if not self._pruned(m):
            return m.stored
        if m.block_unit is not None and (m.row_unit or m.col_unit):
            return int(self._weight_mask(m, hard=True).sum())
        if m.block_unit is not None:
            br, bc = self.config.block
            return int(masks[m.block_unit].sum()) * br * bc
        rows = int(masks[m.row_unit].sum()) * m.row_group if m.row_unit else m.rows
        cols = int(masks[m.col_unit].sum()) * m.col_group if m.col_unit else m.cols
        return rows * cols

    @staticmethod
    def _pruned(m: _Matrix) -> bool:
        return bool(m.row_unit or m.col_unit or m.block_unit)

    def remaining_fraction(self, hard: bool = False) -> torch.Tensor | float:
        """p: remaining encoder Linear weights over the dense model's (:mod:`sparse.mlpruning.regularizer`).

        ``hard=False``: 0-d float32 tensor whose value counts the kept units of every threshold (exact
        unless rows or columns and blocks of one matrix are pruned together, where the product of the
        shares is an estimate) and whose gradient flows through the keep ratios ``sigmoid(t)``
        (straight-through); ``hard=True``: the exact fraction the current masks keep (float).
        """
        if hard:
            with torch.no_grad():
                masks = self.hard_masks()
                kept = sum(self._kept(m, masks) for m in self._matrices)
            return kept / max(self.reference_weights, 1)
        ratios = {}
        for k, u in self.units.items():
            r = u.topk.keep_ratio()
            # value: the kept share of the hard count (ceil, row_multiple), gradient: through sigmoid(t)
            ratios[k] = r + (u.topk.count() / u.topk.units - r).detach()
        return expected_weights(self._counts(), ratios) / max(self.reference_weights, 1)

    def regularization_loss(self) -> torch.Tensor:
        """``lambda * R(p)`` (0-d float32, differentiable in the thresholds): add it to the task loss.

        See :mod:`sparse.mlpruning.regularizer` for R, the adaptive lambda and its defaults;
        ``pruner.regularizer.last`` holds the latest p, R and lambda.
        """
        return self.regularizer(self.remaining_fraction())

    # ------------------------------------------------------------------------------ one-shot
    def _uniform_counts(self, ratio: float) -> dict[str, int]:
        out = {}
        for k, u in self.units.items():
            n = u.topk.units
            c = math.ceil(ratio * n - 1e-9)
            if c > 0 and u.topk.multiple > 1:
                c = math.ceil(c / u.topk.multiple) * u.topk.multiple
            out[k] = min(c, n)
        return out

    def _fraction_for(self, counts: dict[str, int]) -> float:
        with torch.no_grad():
            saved = {k: u.topk.threshold.detach().clone() for k, u in self.units.items()}
            try:
                for k, c in counts.items():
                    self.units[k].topk.set_count(c)
                return float(self.remaining_fraction(hard=True))
            finally:
                for k, t in saved.items():
                    self.units[k].topk.threshold.copy_(t)

    def one_shot(self, keep: float) -> float:
        """Set every threshold so that about ``keep`` of the encoder's Linear weights remain.

        One keep ratio for every threshold (the same share of heads, rows and blocks everywhere), found by
        bisection on the exact kept count; which units stay is decided by the current scores. ``keep``
        is a fraction of the dense model's encoder weights (for a packed model: of the original dense
        model's). Returns the fraction that remains (within a few units' weights of ``keep``, above it
        when rounding makes it so).

        Raises:
            ValueError: ``keep`` not a number in (0, 1].
        """
        if isinstance(keep, bool) or not isinstance(keep, (int, float)) or not math.isfinite(keep) \
                or not 0.0 < keep <= 1.0:
            raise ValueError(f"keep: expected a fraction of the encoder weights in (0, 1], got {keep!r}")
        full = self._fraction_for(self._uniform_counts(1.0))
        if keep >= full:
            if keep > full + 1e-9:
                log.warning("one_shot: keep=%.4f but the model has only %.4f of the dense encoder weights; "
                            "keeping everything", keep, full)
            counts = self._uniform_counts(1.0)
        else:
            lo, hi = 0.0, 1.0  # fraction(lo) <= keep < fraction(hi)
            for _ in range(40):
                mid = (lo + hi) / 2
                if self._fraction_for(self._uniform_counts(mid)) <= keep:
                    lo = mid
                else:
                    hi = mid
            c_lo, c_hi = self._uniform_counts(lo), self._uniform_counts(hi)
            f_lo, f_hi = self._fraction_for(c_lo), self._fraction_for(c_hi)
            counts = c_lo if keep - f_lo <= f_hi - keep else c_hi
        for k, c in counts.items():
            self.units[k].topk.set_count(c)
        p = float(self.remaining_fraction(hard=True))
        log.info("one_shot: keep %.4f -> %.4f of the dense encoder weights remain", keep, p)
        return p

    # ------------------------------------------------------------------------------ report and packing
    def report(self) -> dict:
        """Per layer: heads, rows and blocks kept of each threshold; the remaining fraction; notes
        (layers whose heads are all pruned lose their attention on packing)."""
        masks = self.hard_masks()
        layers, notes = [], []
        n_layers = len(encoder_layers(self.model, self.family))
        for i in range(n_layers):
            entry = {"layer": i}
            for k, mk in masks.items():
                if k.startswith(f"layer{i}_"):
                    entry[k[len(f"layer{i}_"):]] = {"kept": int(mk.sum()), "of": int(mk.numel())}
            if "heads" in entry and entry["heads"]["kept"] == 0:
                notes.append(f"layer {i}: all heads pruned: its attention is removed on packing")
            layers.append(entry)
        return {"remaining_fraction": self.remaining_fraction(hard=True), "target": self.config.target,
                "reference_weights": self.reference_weights, "layers": layers, "notes": notes}

    def _plans(self) -> list[LayerPlan]:
        masks = self.hard_masks()
        n_layers = len(encoder_layers(self.model, self.family))
        plans = [LayerPlan(block=tuple(self.config.block)) for _ in range(n_layers)]
        for m in self._matrices:
            plan = plans[m.layer]
            if m.role == "query" and m.row_unit is not None:
                plan.heads = masks[m.row_unit].nonzero().flatten()
            if m.role in ("attn_out", "ffn_in", "ffn_out") and m.row_unit is not None:
                plan.rows[m.role] = masks[m.row_unit].nonzero().flatten()
            if m.block_unit is not None:
                plan.blocks[m.role] = self._block_mask(m.block_unit, hard=True)
        return plans

    def pack(self) -> nn.Module:
        """A physically smaller copy of the model with the same call signature and the masked model's
        outputs (fp32 tolerance): pruned heads, rows and columns removed, pruned blocks as
        ``BlockSparseLinear`` (:mod:`sparse.mlpruning.pack`). The pruner and the model are unchanged.

        Before any pruning (every threshold keeps everything) this returns an equal dense copy (plain
        ``nn.Linear`` matrices, same outputs) and logs that nothing was pruned. The copy's
        ``config.mlpruning`` records the per-layer shapes (what :func:`~sparse.mlpruning.load_packed`
        rebuilds), the encoder weight counts and the notes.
        """
        plans = self._plans()
        with self._detached():
            packed = copy.deepcopy(self.model)
        fam = self.family
        layers = encoder_layers(packed, fam)
        prefixes = layer_prefixes(packed, fam)
        notes: list[str] = []
        if all(u.topk.count() == u.topk.units for u in self.units.values()):
            notes.append("nothing pruned yet (every threshold keeps all its units): a dense copy")
            log.info("pack: %s", notes[-1])
        records = [pack_layer(layer, fam, plan, self.head_dim, prefixes[i], notes)
                   for i, (layer, plan) in enumerate(zip(layers, plans))]
        prev = getattr(packed.config, PACKED_KEY, None)
        record = {"version": FORMAT_VERSION, "family": fam.name, "head_dim": self.head_dim,
                  "dense_encoder_weights": self.reference_weights,
                  "encoder_weights": encoder_weight_count(layers, fam), "layers": records,
                  "notes": (list(prev.get("notes", [])) if isinstance(prev, Mapping) else []) + notes}
        record["remaining_fraction"] = record["encoder_weights"] / max(record["dense_encoder_weights"], 1)
        setattr(packed.config, PACKED_KEY, record)
        return packed

    def save_packed(self, path: str, *, tokenizer: Any = None, force: bool = False) -> str:
        """``pack()`` and write it as a Hugging Face style folder (:func:`sparse.mlpruning.io.save_packed`)."""
        from .io import save_packed

        return save_packed(self.pack(), path, tokenizer=tokenizer, force=force)

    # ------------------------------------------------------------------------------ state
    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):
        """Load scores and thresholds saved by a pruner of the same recipe and model structure.

        Raises:
            ValueError: ``state_dict`` comes from another recipe or model structure (its fingerprint
                differs, or it has none).
        """
        if not isinstance(state_dict, Mapping):
            raise ValueError(f"state_dict: expected a mapping, got {type(state_dict).__name__}")
        theirs = state_dict.get("fingerprint")
        if not isinstance(theirs, torch.Tensor) or not torch.equal(theirs.cpu(), self.fingerprint.cpu()):
            got = bytes(theirs.tolist()).hex() if isinstance(theirs, torch.Tensor) else "none"
            raise ValueError(f"state_dict: saved by an MLPruner with another recipe or model structure "
                             f"(fingerprint {got}, this pruner's {bytes(self.fingerprint.tolist()).hex()}); "
                             f"build the pruner with the recipe and model it was saved with")
        return super().load_state_dict(state_dict, strict=strict, assign=assign)
