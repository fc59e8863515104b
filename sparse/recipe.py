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
from typing import Any, Mapping

__all__ = ["RecipeError", "Recipe", "PruningEntry", "Targets", "Pattern", "Method", "Schedule",
           "ModelConfig", "DataConfig", "TrainConfig", "DistillConfig", "load_recipe", "DEFAULT_EXCLUDE", "MODULE_TYPES",
           "PATTERN_KINDS", "METHOD_KINDS", "SCHEDULE_KINDS", "SOLVERS", "MODELS", "DATASETS", "TEACHERS"]


class RecipeError(ValueError):
    """A recipe key or value is not allowed; the message names the key, the allowed values and the value."""


# Classifier heads and poolers (which only feed the head) are kept dense by default: they are tiny
# and pruning them costs accuracy for no speed. Embeddings and norms are not Linear, so the default
# type filter already skips them.
DEFAULT_EXCLUDE: tuple[str, ...] = (r"(^|\.)(classifier|pooler|lm_head|score|qa_outputs|head)(\.|$)",)
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
        d = _check_keys(d, ("types", "include", "exclude", "on_indivisible"), where)
        types = d.get("types", list(cls.types))
        if isinstance(types, str):
            types = [types]
        if not isinstance(types, (list, tuple)) or not types:
            raise RecipeError(f"{where}.types: expected a non-empty list of {', '.join(MODULE_TYPES)}, got {types!r}")
        types = tuple(_choice(t, f"{where}.types", MODULE_TYPES) for t in types)
        return cls(types=types,
                   include=_regex_list(d.get("include", []), f"{where}.include"),
                   exclude=_regex_list(d.get("exclude", list(DEFAULT_EXCLUDE)), f"{where}.exclude"),
                   on_indivisible=_choice(d.get("on_indivisible", "error"), f"{where}.on_indivisible",
                                          ON_INDIVISIBLE))


@dataclass(frozen=True)
class Pattern:
    """Sparsity pattern. ``nm``: keep ``n`` of every ``m`` along in_features (``transposable``: every
    aligned m x m tile keeps n per row and column, solved with ``solver``). ``unstructured``/``block``:
    drop the ``sparsity`` fraction of smallest weights / ``block`` = (rows, cols) blocks by L1 norm."""
    kind: str
    sparsity: float | None = None
    n: int | None = None
    m: int | None = None
    transposable: bool = False
    solver: str = "auto"
    block: tuple[int, int] | None = None

    @property
    def target_sparsity(self) -> float:
        return (1.0 - self.n / self.m) if self.kind == "nm" else float(self.sparsity)

    def describe(self) -> str:
        if self.kind == "nm":
            return f"{self.n}:{self.m}" + (" transposable" if self.transposable else "")
        if self.kind == "block":
            return f"block {self.block[0]}x{self.block[1]} {100 * self.sparsity:g}%"
        return f"unstructured {100 * self.sparsity:g}%"

    @classmethod
    def from_dict(cls, d: Any, where: str) -> "Pattern":
        if not isinstance(d, Mapping) or "type" not in d:
            raise RecipeError(f"{where}: expected a mapping with 'type' one of {', '.join(PATTERN_KINDS)}, got {d!r}")
        kind = _choice(d["type"], f"{where}.type", PATTERN_KINDS)
        if kind == "nm":
            d = _check_keys(d, ("type", "n", "m", "transposable", "solver"), where, required=("n", "m"))
            n = _int(d["n"], f"{where}.n", 1)
            m = _int(d["m"], f"{where}.m", 2, 32)
            if n >= m:
                raise RecipeError(f"{where}.n: expected n < m (keep n of every m), got n={n}, m={m}")
            return cls(kind, n=n, m=m, transposable=_bool(d.get("transposable", False), f"{where}.transposable"),
                       solver=_choice(d.get("solver", "auto"), f"{where}.solver", SOLVERS))
        if kind == "unstructured":
            d = _check_keys(d, ("type", "sparsity"), where, required=("sparsity",))
            return cls(kind, sparsity=_float(d["sparsity"], f"{where}.sparsity", 0.0, 1.0, hi_open=True))
        d = _check_keys(d, ("type", "sparsity", "block"), where, required=("sparsity", "block"))
        blk = d["block"]
        if not isinstance(blk, (list, tuple)) or len(blk) != 2:
            raise RecipeError(f"{where}.block: expected [rows, cols], got {blk!r}")
        blk = (_int(blk[0], f"{where}.block[0]", 1), _int(blk[1], f"{where}.block[1]", 1))
        return cls(kind, sparsity=_float(d["sparsity"], f"{where}.sparsity", 0.0, 1.0, hi_open=True), block=blk)


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
        d = _check_keys(d, ("type", "lambda"), where, required=("type",))
        kind = _choice(d["type"], f"{where}.type", METHOD_KINDS)
        if kind == "magnitude" and "lambda" in d:
            raise RecipeError(f"{where}.lambda: only allowed with type srste, got type {kind!r}")
        return cls(kind, _float(d.get("lambda", 2e-4), f"{where}.lambda", 0.0))


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
        if not isinstance(d, Mapping) or "type" not in d:
            raise RecipeError(f"{where}: expected a mapping with 'type' one of {', '.join(SCHEDULE_KINDS)}, got {d!r}")
        kind = _choice(d["type"], f"{where}.type", SCHEDULE_KINDS)
        if kind == "oneshot":
            d = _check_keys(d, ("type", "at_step"), where)
            return cls(kind, at_step=_int(d.get("at_step", 0), f"{where}.at_step", 0))
        d = _check_keys(d, ("type", "initial_sparsity", "start_step", "end_step", "frequency"), where,
                        required=("end_step",))
        start = _int(d.get("start_step", 0), f"{where}.start_step", 0)
        end = _int(d["end_step"], f"{where}.end_step", 0)
        if end <= start:
            raise RecipeError(f"{where}.end_step: expected end_step > start_step ({start}), got {end}")
        return cls(kind, initial_sparsity=_float(d.get("initial_sparsity", 0.0), f"{where}.initial_sparsity",
                                                 0.0, 1.0, hi_open=True),
                   start_step=start, end_step=end, frequency=_int(d.get("frequency", 1), f"{where}.frequency", 1))


@dataclass(frozen=True)
class PruningEntry:
    name: str
    targets: Targets
    pattern: Pattern
    method: Method = Method()
    schedule: Schedule = Schedule()
    refresh_every: int = 0

    @classmethod
    def from_dict(cls, d: Any, where: str) -> "PruningEntry":
        d = _check_keys(d, ("name", "targets", "pattern", "method", "schedule", "refresh_every"), where,
                        required=("pattern",))
        name = _str(d.get("name", where), f"{where}.name")
        pattern = Pattern.from_dict(d["pattern"], f"{where}.pattern")
        schedule = Schedule.from_dict(d.get("schedule", {"type": "oneshot"}), f"{where}.schedule")
        if schedule.kind == "cubic":
            if pattern.kind == "nm":
                raise RecipeError(f"{where}.schedule.type: 'cubic' needs a sparsity pattern (unstructured or "
                                  f"block), got pattern type 'nm' (use 'oneshot')")
            if schedule.initial_sparsity > pattern.sparsity:
                raise RecipeError(f"{where}.schedule.initial_sparsity: expected <= pattern.sparsity "
                                  f"({pattern.sparsity}), got {schedule.initial_sparsity}")
        return cls(name=name, targets=Targets.from_dict(d.get("targets", {}), f"{where}.targets"),
                   pattern=pattern, method=Method.from_dict(d.get("method", {"type": "magnitude"}), f"{where}.method"),
                   schedule=schedule, refresh_every=_int(d.get("refresh_every", 0), f"{where}.refresh_every", 0))


@dataclass(frozen=True)
class ModelConfig:
    """``source``: ``minilm`` (the packaged pretrained MiniLM-L6) or a Hugging Face model folder."""
    source: str = "minilm"
    max_length: int = 128

    @classmethod
    def from_dict(cls, d: Any, where: str) -> "ModelConfig":
        d = _check_keys(d, ("source", "max_length"), where)
        src = _name_or_path(d.get("source", "minilm"), f"{where}.source", MODELS, "a model folder")
        return cls(src, _int(d.get("max_length", 128), f"{where}.max_length", 8, 4096))


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "bbc_news"
    test_size: float = 0.2
    split_seed: int = 0

    @classmethod
    def from_dict(cls, d: Any, where: str) -> "DataConfig":
        d = _check_keys(d, ("dataset", "test_size", "split_seed"), where)
        return cls(_choice(d.get("dataset", "bbc_news"), f"{where}.dataset", DATASETS),
                   _float(d.get("test_size", 0.2), f"{where}.test_size", 0.0, 1.0, lo_open=True, hi_open=True),
                   _int(d.get("split_seed", 0), f"{where}.split_seed", 0))


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
        keys = tuple(f.name for f in dataclasses.fields(cls))
        d = _check_keys(d, keys, where)
        return cls(epochs=_int(d.get("epochs", cls.epochs), f"{where}.epochs", 1),
                   batch_size=_int(d.get("batch_size", cls.batch_size), f"{where}.batch_size", 1),
                   lr=_float(d.get("lr", cls.lr), f"{where}.lr", 0.0, lo_open=True),
                   head_lr=_float(d.get("head_lr", cls.head_lr), f"{where}.head_lr", 0.0, lo_open=True),
                   weight_decay=_float(d.get("weight_decay", cls.weight_decay), f"{where}.weight_decay", 0.0),
                   warmup_ratio=_float(d.get("warmup_ratio", cls.warmup_ratio), f"{where}.warmup_ratio", 0.0, 1.0),
                   seed=_int(d.get("seed", cls.seed), f"{where}.seed", 0),
                   bf16=_bool(d.get("bf16", cls.bf16), f"{where}.bf16"),
                   eval_batch_size=_int(d.get("eval_batch_size", cls.eval_batch_size), f"{where}.eval_batch_size", 1))


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
        d = _check_keys(d, ("teacher", "alpha", "temperature"), where)
        teacher = _name_or_path(d.get("teacher", cls.teacher), f"{where}.teacher", TEACHERS,
                                "a fine-tuned model folder")
        return cls(teacher=teacher,
                   alpha=_float(d.get("alpha", cls.alpha), f"{where}.alpha", 0.0, 1.0),
                   temperature=_float(d.get("temperature", cls.temperature), f"{where}.temperature", 0.0,
                                      lo_open=True))


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
        d = _check_keys(d, ("name", "description", "model", "data", "train", "distill", "pruning"), "recipe")
        name = _str(d.get("name", os.path.splitext(os.path.basename(source))[0] if source else "recipe"),
                    "recipe.name")
        desc = d.get("description", "")
        if not isinstance(desc, str):
            raise RecipeError(f"recipe.description: expected a string, got {type(desc).__name__}")
        pr = d.get("pruning", [])
        if pr is None:
            pr = []
        if isinstance(pr, Mapping):
            pr = [pr]
        if not isinstance(pr, (list, tuple)):
            raise RecipeError(f"recipe.pruning: expected a list of pruning entries, got {type(pr).__name__}")
        entries = tuple(PruningEntry.from_dict(e, f"pruning[{i}]") for i, e in enumerate(pr))
        names = [e.name for e in entries]
        dup = {x for x in names if names.count(x) > 1}
        if dup:
            raise RecipeError(f"pruning[].name: expected unique entry names, got duplicates {sorted(dup)}")
        return cls(name=name, pruning=entries, description=desc,
                   model=ModelConfig.from_dict(d.get("model", {}), "model"),
                   data=DataConfig.from_dict(d.get("data", {}), "data"),
                   train=TrainConfig.from_dict(d.get("train", {}), "train"),
                   distill=None if d.get("distill") is None else DistillConfig.from_dict(d["distill"], "distill"),
                   source=source)

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
