"""Pruning recipes: a strict dataclass schema loaded from YAML (PyYAML ``safe_load``) or a dict.

A recipe names the model and data to fine-tune on (used by ``sparse finetune``), the training
hyper-parameters, and one or more pruning entries, each with:

* ``targets``: module types plus fqn regexes (``re.search``, so one recipe serves ``BertModel``
  and ``BertForSequenceClassification`` naming alike) and exclusions. The default targets every
  ``Linear`` and skips embeddings and norms (not Linear) and classifier heads / poolers.
* ``pattern``: ``unstructured`` (sparsity), ``nm`` (n, m, transposable, solver) or ``block``
  (block rows x cols, sparsity).
* ``method``: ``magnitude`` or ``srste`` (with ``lambda``).
* ``schedule``: ``oneshot`` at a step, or ``cubic`` (Zhu & Gupta) from ``initial_sparsity`` to the
  pattern's sparsity over ``[start_step, end_step]`` every ``frequency`` steps.
* ``refresh_every``: recompute masks from the current weights every k optimizer steps (0: never).

and optionally a top-level ``distill`` block (``teacher``: ``dense`` or a model folder, ``alpha``,
``temperature``): knowledge distillation from a fine-tuned dense teacher (see :class:`DistillConfig`).

Every unknown key or bad value raises :class:`RecipeError` naming the key, what is allowed and what
was given.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import numbers
import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from .policy import HEAD_REGEX

__all__ = ["RecipeError", "Recipe", "PruningEntry", "Targets", "Pattern", "Method", "Schedule",
           "ModelConfig", "DataConfig", "TrainConfig", "DistillConfig", "load_recipe", "DEFAULT_EXCLUDE", "MODULE_TYPES",
           "PATTERN_KINDS", "METHOD_KINDS", "SCHEDULE_KINDS", "SOLVERS", "MODELS", "DATASETS", "TEACHERS"]


class RecipeError(ValueError):
    """A recipe key or value is not allowed; the message names the key, the allowed values and the value."""


# The layer policy (sparse.policy): task heads, poolers and the MLM head (``cls.*``) stay dense by
# default, as in ``convert``. Embeddings and norms are not Linear, so the default type filter already
# skips them.
DEFAULT_EXCLUDE: tuple[str, ...] = (HEAD_REGEX,)
MODULE_TYPES: tuple[str, ...] = ("Linear", "Conv1d", "Conv2d")
PATTERN_KINDS: tuple[str, ...] = ("unstructured", "nm", "block")
METHOD_KINDS: tuple[str, ...] = ("magnitude", "srste")
SCHEDULE_KINDS: tuple[str, ...] = ("oneshot", "cubic")
SOLVERS: tuple[str, ...] = ("auto", "exact", "approx", "greedy", "flow")
ON_INDIVISIBLE: tuple[str, ...] = ("error", "skip")
MODELS: tuple[str, ...] = ("minilm",)  # or a path to a Hugging Face model folder
DATASETS: tuple[str, ...] = ("bbc_news",)
TEACHERS: tuple[str, ...] = ("dense",)  # or a path to a fine-tuned model folder


# --------------------------------------------------------------------------------------------- helpers
def _check_keys(d: Any, allowed: tuple[str, ...], where: str, required: tuple[str, ...] = ()) -> dict:
    if not isinstance(d, Mapping):
        raise RecipeError(f"{where}: expected a mapping with keys {', '.join(allowed)}, got "
                          f"{type(d).__name__} {d!r}")
    for k in d:
        if k not in allowed:
            raise RecipeError(f"{where}.{k}: unknown key; allowed keys: {', '.join(allowed)}")
    for k in required:
        if k not in d:
            raise RecipeError(f"{where}.{k}: required key missing (allowed keys: {', '.join(allowed)})")
    return dict(d)


def _int(v: Any, key: str, lo: int | None = None, hi: int | None = None) -> int:
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise RecipeError(f"{key}: expected an integer, got {type(v).__name__} {v!r}")
    v = int(v)
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        rng = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise RecipeError(f"{key}: expected an integer {rng}, got {v}")
    return v


def _float(v: Any, key: str, lo: float | None = None, hi: float | None = None, *,
           lo_open: bool = False, hi_open: bool = False) -> float:
    # YAML 1.1 reads "5e-5" (no dot) as a string; accept numeric strings rather than surprise users.
    if isinstance(v, str):
        try:
            v = float(v)
        except ValueError:
            raise RecipeError(f"{key}: expected a number, got {v!r}") from None
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise RecipeError(f"{key}: expected a number, got {type(v).__name__} {v!r}")
    v = float(v)
    if v != v or v in (float("inf"), float("-inf")):
        raise RecipeError(f"{key}: expected a finite number, got {v}")
    bad = ((lo is not None and (v <= lo if lo_open else v < lo))
           or (hi is not None and (v >= hi if hi_open else v > hi)))
    if bad:
        lb = "(" if lo_open else "["
        hb = ")" if hi_open else "]"
        raise RecipeError(f"{key}: expected a number in {lb}{lo if lo is not None else '-inf'}, "
                          f"{hi if hi is not None else 'inf'}{hb}, got {v}")
    return v


def _bool(v: Any, key: str) -> bool:
    if not isinstance(v, bool):
        raise RecipeError(f"{key}: expected true or false, got {type(v).__name__} {v!r}")
    return v


def _choice(v: Any, key: str, allowed: tuple[str, ...]) -> str:
    if not isinstance(v, str) or v not in allowed:
        raise RecipeError(f"{key}: expected one of {', '.join(allowed)}, got {v!r}")
    return v


def _name_or_path(v: Any, key: str, names: tuple[str, ...], what: str) -> str:
    """One of ``names``, or something that looks like a path (has a separator or starts with '.')."""
    v = _str(v, key)
    if v not in names and not (os.sep in v or "/" in v or v.startswith(".")):
        raise RecipeError(f"{key}: expected one of {', '.join(names)} or a path to {what}, got {v!r}")
    return v


def _str(v: Any, key: str) -> str:
    if not isinstance(v, str) or not v:
        raise RecipeError(f"{key}: expected a non-empty string, got {type(v).__name__} {v!r}")
    return v


def _regex_list(v: Any, key: str) -> tuple[str, ...]:
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, (list, tuple)):
        raise RecipeError(f"{key}: expected a regex or a list of regexes, got {type(v).__name__} {v!r}")
    out = []
    for i, r in enumerate(v):
        if not isinstance(r, str) or not r:
            raise RecipeError(f"{key}[{i}]: expected a non-empty regex string, got {r!r}")
        try:
            re.compile(r)
        except re.error as exc:
            raise RecipeError(f"{key}[{i}]: invalid regex {r!r}: {exc}") from None
        out.append(r)
    return tuple(out)


Check = Callable[[Any, str], Any]  # (value, key as named in errors) -> checked value, or RecipeError


def _build(cls, d: Any, where: str, checks: Mapping[str, Check], *, required: tuple[str, ...] = (),
           rename: Mapping[str, str] | None = None, top: bool = False, **fixed):
    """``cls(**fixed, **{field: checks[key](d[key], "where.key")})`` over the keys ``d`` gives.

    Defaults are written once, on the dataclass fields: a key the recipe leaves out is not passed, so
    its field takes the dataclass default. Keys are checked (unknown, missing required) first, then
    values in the order of ``checks``; ``rename`` maps recipe keys to field names (``type`` -> ``kind``).
    ``top``: the recipe's own keys are named bare in value errors (``train.lr``, not ``recipe.train.lr``).
    """
    d = _check_keys(d, tuple(checks), where, required)
    rename = rename or {}
    kwargs = dict(fixed)
    for key, check in checks.items():
        if key in d:
            kwargs[rename.get(key, key)] = check(d[key], key if top else f"{where}.{key}")
    return cls(**kwargs)


def _kind(d: Any, where: str, kinds: tuple[str, ...]) -> str:
    """The ``type`` of a variant block (pattern, schedule): checked before its other keys."""
    if not isinstance(d, Mapping) or "type" not in d:
        raise RecipeError(f"{where}: expected a mapping with 'type' one of {', '.join(kinds)}, got {d!r}")
    return _choice(d["type"], f"{where}.type", kinds)


def _check(check, *args, **kwargs) -> Check:
    """``check(value, key, *args, **kwargs)`` as a ``(value, key)`` check."""
    return lambda v, key: check(v, key, *args, **kwargs)


def _given(v: Any, key: str) -> Any:
    return v  # already checked (the ``type`` of a variant block)


def _types(v: Any, key: str) -> tuple[str, ...]:
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, (list, tuple)) or not v:
        raise RecipeError(f"{key}: expected a non-empty list of {', '.join(MODULE_TYPES)}, got {v!r}")
    return tuple(_choice(t, key, MODULE_TYPES) for t in v)


def _block(v: Any, key: str) -> tuple[int, int]:
    if not isinstance(v, (list, tuple)) or len(v) != 2:
        raise RecipeError(f"{key}: expected [rows, cols], got {v!r}")
    return _int(v[0], f"{key}[0]", 1), _int(v[1], f"{key}[1]", 1)


def _description(v: Any, key: str) -> str:
    if not isinstance(v, str):
        raise RecipeError(f"{key}: expected a string, got {type(v).__name__}")
    return v


# ---------------------------------------------------------------------------------------------- schema
@dataclass(frozen=True)
class Targets:
    """Which modules an entry prunes: type in ``types`` AND (no ``include`` or some include regex
    found in the fqn) AND no ``exclude`` regex found in the fqn."""
    types: tuple[str, ...] = ("Linear",)
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = DEFAULT_EXCLUDE
    on_indivisible: str = "error"  # "skip": leave a layer whose shape does not fit the pattern dense

    @classmethod
    def from_dict(cls, d: Any, where: str) -> "Targets":
        return _build(cls, d, where, {"types": _types, "include": _regex_list, "exclude": _regex_list,
                                      "on_indivisible": _check(_choice, ON_INDIVISIBLE)})


@dataclass(frozen=True)
class Pattern:
    """Sparsity pattern. ``nm``: keep ``n`` of every ``m`` along in_features (``transposable``: every
    aligned m x m tile keeps n per row and column, solved with ``solver``). ``unstructured``/``block``:
    drop the ``sparsity`` fraction of smallest weights / ``block`` = (rows, cols) blocks by L1 norm.

    The masks themselves are built by the pattern object :meth:`to_pattern` returns
    (:mod:`sparse.pruning.patterns`)."""
    kind: str
    sparsity: float | None = None
    n: int | None = None
    m: int | None = None
    transposable: bool = False
    solver: str = "auto"
    block: tuple[int, int] | None = None

    def to_pattern(self):
        """The :mod:`sparse.pruning.patterns` object (``NMPattern``, ``TransposableNMPattern``,
        ``UnstructuredPattern`` or ``BlockPattern``) that builds and checks this pattern's masks."""
        from .pruning.patterns import pattern_from_recipe  # torch only when masks are wanted

        return pattern_from_recipe(self)

    @property
    def target_sparsity(self) -> float:
        return self.to_pattern().target_sparsity

    def describe(self) -> str:
        return self.to_pattern().describe()

    @classmethod
    def from_dict(cls, d: Any, where: str) -> "Pattern":
        kind = _kind(d, where, PATTERN_KINDS)
        sparsity = _check(_float, 0.0, 1.0, hi_open=True)
        if kind == "nm":
            p = _build(cls, d, where, {"type": _given, "n": _check(_int, 1), "m": _check(_int, 2, 32),
                                       "transposable": _bool, "solver": _check(_choice, SOLVERS)},
                       required=("n", "m"), rename={"type": "kind"})
            if p.n >= p.m:
                raise RecipeError(f"{where}.n: expected n < m (keep n of every m), got n={p.n}, m={p.m}")
            return p
        if kind == "unstructured":
            return _build(cls, d, where, {"type": _given, "sparsity": sparsity}, required=("sparsity",),
                          rename={"type": "kind"})
        return _build(cls, d, where, {"type": _given, "sparsity": sparsity, "block": _block},
                      required=("sparsity", "block"), rename={"type": "kind"})


@dataclass(frozen=True)
class Method:
    """``magnitude``: hard masks (grads and weights masked). ``srste``: forward with the masked weight,
    the dense gradient plus ``lam * (~mask) * W`` updates a dense shadow copy (Zhou et al., 2021)."""
    kind: str = "magnitude"
    lam: float = 2e-4

    @classmethod
    def from_dict(cls, d: Any, where: str) -> "Method":
        if isinstance(d, str):
            d = {"type": d}
        m = _build(cls, d, where, {"type": _check(_choice, METHOD_KINDS), "lambda": _check(_float, 0.0)},
                   required=("type",), rename={"type": "kind", "lambda": "lam"})
        if m.kind != "srste" and "lambda" in d:
            raise RecipeError(f"{where}.lambda: only allowed with type srste, got type {m.kind!r}")
        return m


@dataclass(frozen=True)
class Schedule:
    """``oneshot``: masks appear after optimizer step ``at_step`` (0: before the first forward).
    ``cubic``: s_t = s_f + (s_i - s_f)(1 - (t - start)/(end - start))^3, updated every ``frequency``
    steps from ``start_step`` to ``end_step``; s_f is the pattern's sparsity."""
    kind: str = "oneshot"
    at_step: int = 0
    initial_sparsity: float = 0.0
    start_step: int = 0
    end_step: int = 0
    frequency: int = 1

    @classmethod
    def from_dict(cls, d: Any, where: str) -> "Schedule":
        kind = _kind(d, where, SCHEDULE_KINDS)
        if kind == "oneshot":
            return _build(cls, d, where, {"type": _given, "at_step": _check(_int, 0)}, rename={"type": "kind"})
        s = _build(cls, d, where, {"type": _given, "initial_sparsity": _check(_float, 0.0, 1.0, hi_open=True),
                                   "start_step": _check(_int, 0), "end_step": _check(_int, 0),
                                   "frequency": _check(_int, 1)},
                   required=("end_step",), rename={"type": "kind"})
        if s.end_step <= s.start_step:
            raise RecipeError(f"{where}.end_step: expected end_step > start_step ({s.start_step}), got {s.end_step}")
        return s


@dataclass(frozen=True)
class PruningEntry:
    name: str
    pattern: Pattern
    targets: Targets = Targets()
    method: Method = Method()
    schedule: Schedule = Schedule()
    refresh_every: int = 0

    @classmethod
    def from_dict(cls, d: Any, where: str) -> "PruningEntry":
        e = _build(cls, d, where, {"name": _str, "targets": Targets.from_dict, "pattern": Pattern.from_dict,
                                   "method": Method.from_dict, "schedule": Schedule.from_dict,
                                   "refresh_every": _check(_int, 0)},
                   required=("pattern",), **({} if isinstance(d, Mapping) and "name" in d else {"name": where}))
        if e.schedule.kind == "cubic":
            if e.pattern.kind == "nm":
                raise RecipeError(f"{where}.schedule.type: 'cubic' needs a sparsity pattern (unstructured or "
                                  f"block), got pattern type 'nm' (use 'oneshot')")
            if e.schedule.initial_sparsity > e.pattern.sparsity:
                raise RecipeError(f"{where}.schedule.initial_sparsity: expected <= pattern.sparsity "
                                  f"({e.pattern.sparsity}), got {e.schedule.initial_sparsity}")
        return e


@dataclass(frozen=True)
class ModelConfig:
    """``source``: ``minilm`` (the packaged pretrained MiniLM-L6) or a Hugging Face model folder."""
    source: str = "minilm"
    max_length: int = 128

    @classmethod
    def from_dict(cls, d: Any, where: str) -> "ModelConfig":
        return _build(cls, d, where, {"source": _check(_name_or_path, MODELS, "a model folder"),
                                      "max_length": _check(_int, 8, 4096)})


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "bbc_news"
    test_size: float = 0.2
    split_seed: int = 0

    @classmethod
    def from_dict(cls, d: Any, where: str) -> "DataConfig":
        return _build(cls, d, where, {"dataset": _check(_choice, DATASETS),
                                      "test_size": _check(_float, 0.0, 1.0, lo_open=True, hi_open=True),
                                      "split_seed": _check(_int, 0)})


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 3
    batch_size: int = 16
    lr: float = 5e-5
    head_lr: float = 1e-3  # the fresh classifier head learns faster than the pretrained body
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    seed: int = 0
    bf16: bool = True
    eval_batch_size: int = 32

    @classmethod
    def from_dict(cls, d: Any, where: str) -> "TrainConfig":
        positive = _check(_float, 0.0, lo_open=True)
        return _build(cls, d, where, {"epochs": _check(_int, 1), "batch_size": _check(_int, 1), "lr": positive,
                                      "head_lr": positive, "weight_decay": _check(_float, 0.0),
                                      "warmup_ratio": _check(_float, 0.0, 1.0), "seed": _check(_int, 0),
                                      "bf16": _bool, "eval_batch_size": _check(_int, 1)})


@dataclass(frozen=True)
class DistillConfig:
    """Knowledge distillation from a fine-tuned dense teacher while the student is pruned.

    ``teacher``: ``dense`` (the dense fine-tune with this recipe's model, data, training settings, seed
    and steps: taken from the ``sparse finetune`` cache, trained first and cached when missing) or a
    path to a fine-tuned Hugging Face classifier folder. Loss: ``(1 - alpha) * CE(student, labels) +
    alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T))``.
    """
    teacher: str = "dense"
    alpha: float = 0.5
    temperature: float = 2.0

    @classmethod
    def from_dict(cls, d: Any, where: str) -> "DistillConfig":
        return _build(cls, d, where, {"teacher": _check(_name_or_path, TEACHERS, "a fine-tuned model folder"),
                                      "alpha": _check(_float, 0.0, 1.0),
                                      "temperature": _check(_float, 0.0, lo_open=True)})


def _entries(v: Any, key: str) -> tuple[PruningEntry, ...]:
    if v is None:
        v = []
    if isinstance(v, Mapping):
        v = [v]
    if not isinstance(v, (list, tuple)):
        raise RecipeError(f"{key}: expected a list of pruning entries, got {type(v).__name__}")
    entries = tuple(PruningEntry.from_dict(e, f"pruning[{i}]") for i, e in enumerate(v))
    names = [e.name for e in entries]
    dup = {x for x in names if names.count(x) > 1}
    if dup:
        raise RecipeError(f"pruning[].name: expected unique entry names, got duplicates {sorted(dup)}")
    return entries


def _distill(v: Any, key: str) -> "DistillConfig | None":
    return None if v is None else DistillConfig.from_dict(v, key)


@dataclass(frozen=True)
class Recipe:
    name: str
    pruning: tuple[PruningEntry, ...] = ()
    description: str = ""
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    distill: DistillConfig | None = None
    source: str | None = field(default=None, compare=False)  # file the recipe came from, if any

    @classmethod
    def from_dict(cls, d: Any, source: str | None = None) -> "Recipe":
        # a recipe without a name is named after its file
        named = isinstance(d, Mapping) and "name" in d
        default_name = os.path.splitext(os.path.basename(source))[0] if source else "recipe"
        return _build(cls, d, "recipe", {"name": _str, "description": _description, "model": ModelConfig.from_dict,
                                         "data": DataConfig.from_dict, "train": TrainConfig.from_dict,
                                         "distill": _distill, "pruning": _entries},
                      top=True, source=source, **({} if named else {"name": default_name}))

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("source")
        return d

    def pruning_fingerprint(self) -> str:
        """Hash of the pruning entries only: optimizer state is portable across training settings
        but not across pruning set-ups."""
        blob = json.dumps([dataclasses.asdict(e) for e in self.pruning], sort_keys=True, default=list)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def replace(self, **changes) -> "Recipe":
        return dataclasses.replace(self, **changes)


def load_recipe(path_or_dict: "str | os.PathLike | Mapping | Recipe") -> Recipe:
    """Load a recipe from a YAML file path, a mapping, or return a ``Recipe`` unchanged.

    Raises:
        FileNotFoundError: the path does not exist.
        RecipeError: unknown keys, bad values, or YAML that is not a mapping.
    """
    if isinstance(path_or_dict, Recipe):
        return path_or_dict
    if isinstance(path_or_dict, Mapping):
        return Recipe.from_dict(path_or_dict)
    if not isinstance(path_or_dict, (str, os.PathLike)):
        raise RecipeError(f"path_or_dict: expected a YAML path, a mapping or a Recipe, got "
                          f"{type(path_or_dict).__name__}")
    import yaml

    path = os.fspath(path_or_dict)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"recipe file not found: {path}")
    with open(path, encoding="utf-8") as f:
        try:
            data = yaml.safe_load(f)
        except yaml.YAMLError as exc:
            raise RecipeError(f"{path}: not valid YAML: {exc}") from None
    if data is None:
        raise RecipeError(f"{path}: empty recipe (expected a mapping with keys name, model, data, train, pruning)")
    try:
        return Recipe.from_dict(data, source=path)
    except RecipeError as exc:
        raise RecipeError(f"{os.path.basename(path)}: {exc}") from None
