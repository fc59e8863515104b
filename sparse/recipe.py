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
* ``kernel``: ``none`` (masked dense ``nn.Linear``) or ``block-sparse``: once the entry's mask is final
  (after a one-shot step, or at the end of a cubic schedule) its Linears are swapped for
  ``sparse.nn.BlockSparseLinear`` and train on the block-sparse kernels (square blocks of 16, 32, 64 or
  128; no ``refresh_every``, whose masks are never final; see :mod:`sparse.pruning.kernel_swap`), or ``2:4``
  (a 2:4 pattern, CUDA only): once the entry's first mask is set its Linears become ``sparse.nn.SparseLinear24``
  (same Parameters, so ``refresh_every`` works: each refreshed mask makes the module recompress).

or an ``mlpruning`` block instead of pruning entries (:class:`sparse.mlpruning.MLPruningConfig`: head,
row and block pruning with learnable thresholds, packed into a smaller model at the end),

and optionally a top-level ``distill`` block (``teacher``: ``dense`` or a model folder, ``alpha``,
``temperature``): knowledge distillation from a fine-tuned dense teacher (see :class:`DistillConfig`).

Every unknown key or bad value raises :class:`RecipeError` naming the key, what is allowed and what
was given (values cut short: a recipe may come from anyone, see :func:`load_recipe`).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import numbers
import os
import re
import reprlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from .io_utils import check_regular_file
from .policy import HEAD_REGEX

__all__ = ["RecipeError", "Recipe", "PruningEntry", "Targets", "Pattern", "Method", "Schedule",
           "ModelConfig", "DataConfig", "TrainConfig", "DistillConfig", "load_recipe", "DEFAULT_EXCLUDE", "MODULE_TYPES",
           "PATTERN_KINDS", "METHOD_KINDS", "KERNELS", "SCHEDULE_KINDS", "SOLVERS", "MODELS", "DATASETS", "DATA_FORMATS",
           "TEACHERS",
           "MAX_RECIPE_BYTES", "MAX_YAML_NODES", "MAX_YAML_DEPTH", "MAX_SEED", "check_plain_name"]


class RecipeError(ValueError):
    """A recipe key or value is not allowed; the message names the key, the allowed values and the value."""


# The layer policy (sparse.policy): task heads, poolers and the MLM head (``cls.*``) stay dense by
# default, as in ``convert``. Embeddings and norms are not Linear, so the default type filter already
# skips them.
DEFAULT_EXCLUDE: tuple[str, ...] = (HEAD_REGEX,)
MODULE_TYPES: tuple[str, ...] = ("Linear", "Conv1d", "Conv2d")
PATTERN_KINDS: tuple[str, ...] = ("unstructured", "nm", "block")
METHOD_KINDS: tuple[str, ...] = ("magnitude", "srste")
KERNELS: tuple[str, ...] = ("none", "block-sparse", "2:4")
SCHEDULE_KINDS: tuple[str, ...] = ("oneshot", "cubic")
SOLVERS: tuple[str, ...] = ("auto", "exact", "approx", "greedy", "flow")
ON_INDIVISIBLE: tuple[str, ...] = ("error", "skip")
MODELS: tuple[str, ...] = ("minilm",)  # or a path to a Hugging Face model folder
DATASETS: tuple[str, ...] = ("bbc_news", "tweets")
DATA_FORMATS: tuple[str, ...] = ("csv", "jsonl", "hf")
TEACHERS: tuple[str, ...] = ("dense",)  # or a path to a fine-tuned model folder

# Bounds on the work an untrusted recipe file can cause. A real recipe is under 2 KiB, about 100 YAML
# nodes and 6 levels deep; "billion laughs" alias bombs are ~500 bytes that expand to 10^9 nodes.
MAX_RECIPE_BYTES = 1 << 20
MAX_YAML_NODES = 10_000      # after alias expansion
MAX_YAML_DEPTH = 64          # PyYAML's composer recurses once per level
MAX_SEED = 2 ** 32 - 1       # what torch, numpy and scikit-learn all accept
MAX_ENTRY_NAME = 128
NAME_CHARS = "A-Z a-z 0-9 . _ + -"
# A recipe name becomes a folder name (sparse-runs/<name>-seed<S>): a plain, portable file name only.
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_+][A-Za-z0-9._+-]{0,127}")


# --------------------------------------------------------------------------------------------- helpers
_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother, _REPR.maxlong = 3, 60, 60, 40
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = _REPR.maxfrozenset = 6


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _show(v: Any, limit: int = 80) -> str:
    """``repr(v)`` in at most ``limit`` characters, with bounded work: a recipe value can be huge (an
    alias bomb is 10^9 list items sharing storage) and every message shows the value it refuses."""
    try:
        return _cut(_REPR.repr(v), limit)
    except Exception:  # e.g. an int past sys.get_int_max_str_digits()
        return f"<{type(v).__name__} that cannot be shown>"


def _got(v: Any) -> str:
    """``"<type> <short repr>"``: what was given, for messages."""
    return f"{type(v).__name__} {_show(v)}"


def _key(k: Any) -> str:
    """A mapping key as named in messages: bare when it is a short printable string."""
    return _cut(k, 60) if isinstance(k, str) and k.isprintable() else _show(k, 60)


def _check_keys(d: Any, allowed: tuple[str, ...], where: str, required: tuple[str, ...] = ()) -> dict:
    if not isinstance(d, Mapping):
        raise RecipeError(f"{where}: expected a mapping with keys {', '.join(allowed)}, got {_got(d)}")
    for k in d:
        if k not in allowed:
            raise RecipeError(f"{where}.{_key(k)}: unknown key; allowed keys: {', '.join(allowed)}")
    for k in required:
        if k not in d:
            raise RecipeError(f"{where}.{k}: required key missing (allowed keys: {', '.join(allowed)})")
    return dict(d)


def _int(v: Any, key: str, lo: int | None = None, hi: int | None = None) -> int:
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise RecipeError(f"{key}: expected an integer, got {_got(v)}")
    v = int(v)
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        rng = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise RecipeError(f"{key}: expected an integer {rng}, got {_show(v)}")
    return v


def _float(v: Any, key: str, lo: float | None = None, hi: float | None = None, *,
           lo_open: bool = False, hi_open: bool = False) -> float:
    # YAML 1.1 reads "5e-5" (no dot) as a string; accept numeric strings rather than surprise users.
    if isinstance(v, str):
        try:
            v = float(v)
        except ValueError:
            raise RecipeError(f"{key}: expected a number, got {_show(v)}") from None
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise RecipeError(f"{key}: expected a number, got {_got(v)}")
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
        raise RecipeError(f"{key}: expected true or false, got {_got(v)}")
    return v


def _bool_or_auto(v: Any, key: str) -> "bool | str":
    if isinstance(v, bool) or v == "auto":
        return v
    raise RecipeError(f"{key}: expected true, false or auto, got {_got(v)}")


def _choice(v: Any, key: str, allowed: tuple[str, ...]) -> str:
    if not isinstance(v, str) or v not in allowed:
        raise RecipeError(f"{key}: expected one of {', '.join(allowed)}, got {_show(v)}")
    return v


def _name_or_path(v: Any, key: str, names: tuple[str, ...], what: str) -> str:
    """One of ``names``, or something that looks like a path (has a separator or starts with '.')."""
    v = _str(v, key)
    looks_like_path = os.sep in v or "/" in v or v.startswith(".")
    if v not in names and not (looks_like_path and v.isprintable()):
        raise RecipeError(f"{key}: expected one of {', '.join(names)} or a path to {what} (printable characters "
                          f"only), got {_show(v)}")
    return v


def _str(v: Any, key: str) -> str:
    if not isinstance(v, str) or not v:
        raise RecipeError(f"{key}: expected a non-empty string, got {_got(v)}")
    return v


def check_plain_name(v: Any, key: str = "name") -> str:
    """``v`` if it is a plain file name (see ``_PLAIN_NAME``), else ``RecipeError`` naming ``key``.

    A recipe's name becomes the run folder ``sparse-runs/<name>-seed<S>``: separators, ``..``, a leading
    ``-`` (read as an option by shell tools) or ``.`` (hidden), control characters and non-ASCII
    (look-alike) characters are refused rather than cleaned, so the folder is always the one named."""
    if not isinstance(v, str) or not _PLAIN_NAME.fullmatch(v):
        raise RecipeError(f"{key}: expected a plain file name (1-128 characters of {NAME_CHARS}, not starting "
                          f"with '.' or '-'), got {_got(v)}")
    return v


def _entry_name(v: Any, key: str) -> str:
    if not isinstance(v, str) or not v or len(v) > MAX_ENTRY_NAME or not v.isprintable():
        raise RecipeError(f"{key}: expected a non-empty string of at most {MAX_ENTRY_NAME} characters without "
                          f"control characters, got {_got(v)}")
    return v


def _default_name(source: str | None) -> str:
    """The name of a recipe that gives none: its file name, made plain (``my run.yaml`` -> ``my_run``)."""
    if not source:
        return "recipe"
    stem = os.path.splitext(os.path.basename(source))[0]
    return re.sub(r"[^A-Za-z0-9._+-]", "_", stem)[:128].lstrip(".-") or "recipe"


def _regex_list(v: Any, key: str) -> tuple[str, ...]:
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, (list, tuple)):
        raise RecipeError(f"{key}: expected a regex or a list of regexes, got {_got(v)}")
    out = []
    for i, r in enumerate(v):
        if not isinstance(r, str) or not r:
            raise RecipeError(f"{key}[{i}]: expected a non-empty regex string, got {_show(r)}")
        try:
            re.compile(r)
        except (re.error, RecursionError, OverflowError) as exc:
            raise RecipeError(f"{key}[{i}]: invalid regex {_show(r)}: {_cut(str(exc), 120)}") from None
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
        raise RecipeError(f"{where}: expected a mapping with 'type' one of {', '.join(kinds)}, got {_got(d)}")
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
        raise RecipeError(f"{key}: expected a non-empty list of {', '.join(MODULE_TYPES)}, got {_got(v)}")
    return tuple(_choice(t, key, MODULE_TYPES) for t in v)


def _block(v: Any, key: str) -> tuple[int, int]:
    if not isinstance(v, (list, tuple)) or len(v) != 2:
        raise RecipeError(f"{key}: expected [rows, cols], got {_got(v)}")
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

    def to_dict(self) -> dict:
        """The recipe block that :meth:`from_dict` reads back to this pattern."""
        if self.kind == "nm":
            return {"type": "nm", "n": self.n, "m": self.m, "transposable": self.transposable, "solver": self.solver}
        if self.kind == "unstructured":
            return {"type": "unstructured", "sparsity": self.sparsity}
        return {"type": self.kind, "sparsity": self.sparsity, "block": list(self.block)}

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

    def to_dict(self) -> dict:
        """The recipe block that :meth:`from_dict` reads back to this method."""
        return {"type": self.kind, "lambda": self.lam} if self.kind == "srste" else {"type": self.kind}

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

    def to_dict(self) -> dict:
        """The recipe block that :meth:`from_dict` reads back to this schedule."""
        if self.kind == "oneshot":
            return {"type": "oneshot", "at_step": self.at_step}
        return {"type": self.kind, "initial_sparsity": self.initial_sparsity, "start_step": self.start_step,
                "end_step": self.end_step, "frequency": self.frequency}

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
    kernel: str = "none"

    @property
    def final_step(self) -> int:
        """The optimizer step after which this entry's mask no longer changes (without ``refresh_every``)."""
        return self.schedule.at_step if self.schedule.kind == "oneshot" else self.schedule.end_step

    def to_dict(self) -> dict:
        """The recipe entry that :meth:`from_dict` reads back to this entry (variant blocks keyed by
        ``type``, as recipes write them)."""
        return {"name": self.name, "targets": dataclasses.asdict(self.targets), "pattern": self.pattern.to_dict(),
                "method": self.method.to_dict(), "schedule": self.schedule.to_dict(),
                "refresh_every": self.refresh_every, "kernel": self.kernel}

    @classmethod
    def from_dict(cls, d: Any, where: str) -> "PruningEntry":
        e = _build(cls, d, where, {"name": _entry_name, "targets": Targets.from_dict, "pattern": Pattern.from_dict,
                                   "method": Method.from_dict, "schedule": Schedule.from_dict,
                                   "refresh_every": _check(_int, 0), "kernel": _check(_choice, KERNELS)},
                   required=("pattern",), **({} if isinstance(d, Mapping) and "name" in d else {"name": where}))
        if e.schedule.kind == "cubic":
            if e.pattern.kind == "nm":
                raise RecipeError(f"{where}.schedule.type: 'cubic' needs a sparsity pattern (unstructured or "
                                  f"block), got pattern type 'nm' (use 'oneshot')")
            if e.schedule.initial_sparsity > e.pattern.sparsity:
                raise RecipeError(f"{where}.schedule.initial_sparsity: expected <= pattern.sparsity "
                                  f"({e.pattern.sparsity}), got {e.schedule.initial_sparsity}")
        if e.kernel != "none":
            _check_kernel(e, where)
        return e


def _check_kernel(e: PruningEntry, where: str) -> None:
    """``kernel: block-sparse`` swaps the entry's Linears for ``BlockSparseLinear`` once the mask is final."""
    from .ops.layout import BLOCK_SIZES  # torch only for recipes that ask for a kernel

    pat = e.pattern
    shown = f"{pat.describe()} (type {pat.kind})"
    if e.kernel == "2:4":  # SparseLinear24: a 2:4 pattern; masks may be refreshed (the module recompresses)
        if pat.kind != "nm" or (pat.n, pat.m) != (2, 4):
            raise RecipeError(f"{where}.kernel: '2:4' needs pattern {{type: nm, n: 2, m: 4}} (transposable: true for "
                              f"a sparse backward too), got pattern {shown}; allowed values: {', '.join(KERNELS)}")
        if e.targets.types != ("Linear",):
            raise RecipeError(f"{where}.kernel: '2:4' replaces Linear layers only, got targets.types "
                              f"{list(e.targets.types)}; set targets.types: [Linear] or kernel: none")
        return
    if pat.kind != "block" or pat.block[0] != pat.block[1] or pat.block[0] not in BLOCK_SIZES:
        raise RecipeError(f"{where}.kernel: {e.kernel!r} needs a block pattern with square blocks of "
                          f"{', '.join(map(str, BLOCK_SIZES))}, got pattern {shown}; allowed values: "
                          f"{', '.join(KERNELS)} (none for this pattern)")
    if e.refresh_every:
        raise RecipeError(f"{where}.kernel: {e.kernel!r} swaps layers once their mask is final, but refresh_every "
                          f"({e.refresh_every}) recomputes masks for ever; set refresh_every: 0 or kernel: none")
    if e.targets.types != ("Linear",):
        raise RecipeError(f"{where}.kernel: {e.kernel!r} replaces Linear layers only, got targets.types "
                          f"{list(e.targets.types)}; set targets.types: [Linear] or kernel: none")


@dataclass(frozen=True)
class ModelConfig:
    """``source``: ``minilm`` (the packaged pretrained MiniLM-L6) or a Hugging Face model folder."""
    source: str = "minilm"
    max_length: int = 128

    @classmethod
    def from_dict(cls, d: Any, where: str) -> "ModelConfig":
        return _build(cls, d, where, {"source": _check(_name_or_path, MODELS, "a model folder"),
                                      "max_length": _check(_int, 8, 4096)})


def _size(v: Any, key: str) -> "float | int":
    """A split size: a fraction in (0, 1) or a count >= 1 (as scikit-learn's ``train_test_split``)."""
    if isinstance(v, str):
        try:
            v = float(v)
        except ValueError:
            pass
    if isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= 1:
        return int(v)
    if isinstance(v, numbers.Real) and not isinstance(v, bool) and 0.0 < float(v) < 1.0:
        return float(v)
    raise RecipeError(f"{key}: expected a fraction in (0, 1) or a count >= 1, got {_got(v)}")


def _file_path(v: Any, key: str) -> str:
    v = _str(v, key)
    if not v.isprintable():
        raise RecipeError(f"{key}: expected a path of printable characters, got {_show(v)}")
    return v


def _column(v: Any, key: str) -> str:
    v = _str(v, key)
    if len(v) > 256 or not v.isprintable():
        raise RecipeError(f"{key}: expected a column name of at most 256 printable characters, got {_show(v)}")
    return v


def _encoding(v: Any, key: str) -> str:
    import codecs

    v = _str(v, key)
    try:
        return codecs.lookup(v).name
    except LookupError:
        raise RecipeError(f"{key}: unknown text encoding {_show(v)} (e.g. utf-8, latin-1)") from None


# the tweets benchmark: a fixed stratified subsample of the de-duplicated 37,243 tweets
TWEETS_SIZES = {"train_size": 12000, "val_size": 2000, "test_size": 4000}
FILE_KEYS: tuple[str, ...] = ("path", "val_path", "test_path", "text", "label", "text_pair", "encoding")


@dataclass(frozen=True)
class DataConfig:
    """What to fine-tune on (:func:`sparse.data.load_splits`).

    ``dataset``: a packaged dataset (``bbc_news``, ``tweets``), or None when ``format`` is given: ``csv``
    or ``jsonl`` files (``path``, optional ``val_path`` / ``test_path``; columns ``text``, ``label``,
    optional ``text_pair``; ``encoding``) or ``hf`` (``path``: a ``save_to_disk`` folder).
    Splits the data does not have are carved, stratified and seeded with ``split_seed``: test
    (``test_size``) from the training data, then validation (``val_size``) from what is left; then
    ``train_size`` (None: all) subsamples the rest. Sizes: a fraction in (0, 1) or a count >= 1.
    ``tweets`` defaults to 12,000 / 2,000 / 4,000 (:data:`TWEETS_SIZES`).
    """
    dataset: str | None = "bbc_news"
    format: str | None = None
    path: str | None = None
    val_path: str | None = None
    test_path: str | None = None
    text: str = "text"
    label: str = "label"
    text_pair: str | None = None
    encoding: str = "utf-8"
    test_size: float | int = 0.2
    val_size: float | int = 0.1
    train_size: float | int | None = None
    split_seed: int = 0

    @classmethod
    def from_dict(cls, d: Any, where: str) -> "DataConfig":
        checks = {"dataset": _check(_choice, DATASETS), "format": _check(_choice, DATA_FORMATS),
                  "path": _file_path, "val_path": _file_path, "test_path": _file_path, "text": _column,
                  "label": _column, "text_pair": _column, "encoding": _encoding, "test_size": _size,
                  "val_size": _size, "train_size": _size, "split_seed": _check(_int, 0, MAX_SEED)}
        keys = _check_keys(d, tuple(checks), where)
        # Recipe.to_dict() writes every field: None is "not given", and so are the column and encoding
        # defaults of a packaged dataset
        keys = {k: v for k, v in keys.items() if v is not None}
        fmt = keys.get("format")
        if fmt is not None:
            if "dataset" in keys:
                raise RecipeError(f"{where}.dataset: give either dataset ({', '.join(DATASETS)}) or format "
                                  f"({', '.join(DATA_FORMATS)}), not both")
            if "path" not in keys:
                raise RecipeError(f"{where}.path: required with {where}.format {_show(fmt)} (the training file, or "
                                  f"for hf the save_to_disk folder)")
        else:
            defaults = {f.name: f.default for f in dataclasses.fields(cls)}
            given = [k for k in FILE_KEYS if k in keys and keys[k] != defaults[k]]
            for k in FILE_KEYS:
                keys.pop(k, None)
            if given:
                raise RecipeError(f"{where}.{given[0]}: only with {where}.format ({', '.join(DATA_FORMATS)}); "
                                  f"the packaged datasets ({', '.join(DATASETS)}) bring their own files")
        fixed: dict = {"dataset": None} if fmt is not None else {}
        if keys.get("dataset") == "tweets":
            fixed.update({k: v for k, v in TWEETS_SIZES.items() if k not in keys})
        c = _build(cls, keys, where, checks, **fixed)
        if c.format == "hf":
            for k in ("val_path", "test_path", "encoding"):
                if k in keys:
                    raise RecipeError(f"{where}.{k}: only with format csv or jsonl (an hf dataset folder holds its "
                                      f"own splits and encoding)")
        if c.text_pair is not None and c.text_pair in (c.text, c.label) or c.text == c.label:
            raise RecipeError(f"{where}: text ({c.text!r}), label ({c.label!r}) and text_pair "
                              f"({c.text_pair!r}) must be different columns")
        return c


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 3
    batch_size: int = 16
    lr: float = 5e-5
    head_lr: float = 1e-3  # the fresh classifier head learns faster than the pretrained body
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    seed: int = 0
    # bf16 autocast: true, false, or auto (sparse.finetune.resolve_bf16: on a CUDA device with bf16, or a
    # CPU with AMX; off on other CPUs, where oneDNN's bf16 matmul is slower than fp32: 1.7x on a tweets step)
    bf16: "bool | str" = "auto"
    eval_batch_size: int = 32
    # sparse.nn.dropout.use_fast_dropout on the model (same distribution, other random bits); false: PyTorch's
    # own dropout, bit-exact with plain PyTorch runs
    fast_dropout: bool = True

    @classmethod
    def from_dict(cls, d: Any, where: str) -> "TrainConfig":
        positive = _check(_float, 0.0, lo_open=True)
        return _build(cls, d, where, {"epochs": _check(_int, 1), "batch_size": _check(_int, 1), "lr": positive,
                                      "head_lr": positive, "weight_decay": _check(_float, 0.0),
                                      "warmup_ratio": _check(_float, 0.0, 1.0), "seed": _check(_int, 0, MAX_SEED),
                                      "bf16": _bool_or_auto, "eval_batch_size": _check(_int, 1), "fast_dropout": _bool})


@dataclass(frozen=True)
class DistillConfig:
    """Knowledge distillation from a fine-tuned dense teacher while the student is pruned.

    ``teacher``: ``dense`` (the dense fine-tune with this recipe's model, data, training settings, seed
    and steps: taken from the ``sparse finetune`` cache, trained first and cached when missing) or a
    path to a fine-tuned Hugging Face classifier folder. Loss: ``(1 - alpha) * CE(student, labels) +
    alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T))``.

    ``teacher_train`` (with ``teacher: dense`` only): the dense teacher's training settings where they
    differ from the student's, one or more of ``lr``, ``head_lr``, ``weight_decay``, ``warmup_ratio``
    (the keys that change neither the steps nor the seed). A student that must relearn much (90% block
    sparsity) trains at a higher ``train.lr`` than its dense baseline; ``teacher_train: {lr: 1.0e-4}`` keeps
    that baseline, cached once, as its teacher instead of fine-tuning a dense model at the student's lr.
    """
    teacher: str = "dense"
    alpha: float = 0.5
    temperature: float = 2.0
    teacher_train: tuple[tuple[str, float], ...] = ()  # sorted (key, value) pairs

    @classmethod
    def from_dict(cls, d: Any, where: str) -> "DistillConfig":
        cfg = _build(cls, d, where, {"teacher": _check(_name_or_path, TEACHERS, "a fine-tuned model folder"),
                                     "alpha": _check(_float, 0.0, 1.0),
                                     "temperature": _check(_float, 0.0, lo_open=True),
                                     "teacher_train": _teacher_train})
        if cfg.teacher_train and cfg.teacher != "dense":
            raise RecipeError(f"{where}.teacher_train: only with teacher: dense (a model folder is already "
                              f"trained), got teacher {_show(cfg.teacher)}")
        return cfg

    def teacher_recipe_train(self, train: "TrainConfig") -> "TrainConfig":
        """The dense teacher's training settings: the student's ``train`` with ``teacher_train`` applied."""
        return dataclasses.replace(train, **dict(self.teacher_train))


TEACHER_TRAIN_KEYS: tuple[str, ...] = ("lr", "head_lr", "weight_decay", "warmup_ratio")


def _teacher_train(v: Any, key: str) -> tuple[tuple[str, float], ...]:
    d = _check_keys(v, TEACHER_TRAIN_KEYS, key, ())
    if not d:
        raise RecipeError(f"{key}: expected a mapping with one or more of {', '.join(TEACHER_TRAIN_KEYS)}, got {_got(v)}")
    # TrainConfig checks each value as train.<key> would be checked
    TrainConfig.from_dict(dict(d), key)
    return tuple(sorted((k, float(x)) for k, x in d.items()))


def _entries(v: Any, key: str) -> tuple[PruningEntry, ...]:
    if v is None:
        v = []
    if isinstance(v, Mapping):
        v = [v]
    if not isinstance(v, (list, tuple)):
        raise RecipeError(f"{key}: expected a list of pruning entries, got {type(v).__name__}")
    entries = tuple(PruningEntry.from_dict(e, f"pruning[{i}]") for i, e in enumerate(v))
    dup = sorted(name for name, n in Counter(e.name for e in entries).items() if n > 1)
    if dup:
        raise RecipeError(f"pruning[].name: expected unique entry names, got duplicates {_show(dup)}")
    return entries


def _distill(v: Any, key: str) -> "DistillConfig | None":
    return None if v is None else DistillConfig.from_dict(v, key)


def _mlpruning(v: Any, key: str):
    from .mlpruning.config import MLPruningConfig  # torch-free: sparse.mlpruning resolves names lazily

    return None if v is None else MLPruningConfig.from_dict(v, key)


@dataclass(frozen=True)
class Recipe:
    name: str
    pruning: tuple[PruningEntry, ...] = ()
    description: str = ""
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    distill: DistillConfig | None = None
    mlpruning: "MLPruningConfig | None" = None  # sparse.mlpruning.MLPruningConfig: heads/rows/blocks
    source: str | None = field(default=None, compare=False)  # file the recipe came from, if any

    def __post_init__(self):
        check_plain_name(self.name)  # also for Recipe(...) and .replace(name=...), not only loaded recipes
        if self.mlpruning is not None and self.pruning:
            raise RecipeError("mlpruning: cannot be combined with pruning entries (both would mask the same "
                              "Linear weights); use one or the other")

    @classmethod
    def from_dict(cls, d: Any, source: str | None = None) -> "Recipe":
        # a recipe without a name is named after its file
        named = isinstance(d, Mapping) and "name" in d
        default_name = _default_name(source)
        return _build(cls, d, "recipe", {"name": check_plain_name, "description": _description, "model": ModelConfig.from_dict,
                                         "data": DataConfig.from_dict, "train": TrainConfig.from_dict,
                                         "distill": _distill, "pruning": _entries, "mlpruning": _mlpruning},
                      top=True, source=source, **({} if named else {"name": default_name}))

    def to_dict(self) -> dict:
        """The recipe as a mapping that :meth:`from_dict` (and :func:`load_recipe`) reads back to an equal
        recipe: what run folders save as the recipe they ran."""
        d = dataclasses.asdict(self)
        d.pop("source")
        d["pruning"] = [e.to_dict() for e in self.pruning]
        if self.distill is not None:
            d["distill"].pop("teacher_train")
            if self.distill.teacher_train:
                d["distill"]["teacher_train"] = dict(self.distill.teacher_train)
        return d

    def pruning_fingerprint(self) -> str:
        """Hash of the pruning entries only: optimizer state is portable across training settings
        but not across pruning set-ups."""
        # kernel: none is left out so that fingerprints of recipes written before the key stay the same
        entries = [{k: v for k, v in dataclasses.asdict(e).items() if not (k == "kernel" and v == "none")}
                   for e in self.pruning]
        blob = json.dumps(entries, sort_keys=True, default=list)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def replace(self, **changes) -> "Recipe":
        return dataclasses.replace(self, **changes)


class _YamlLimit(Exception):
    """Raised inside the YAML loader; becomes ``RecipeError("... not valid YAML: ...")``."""


def _yaml_children(node) -> list:
    import yaml

    if isinstance(node, yaml.SequenceNode):
        return node.value
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def _check_expansion(root) -> None:
    """Refuse a document whose node graph expands (aliases followed) to more than ``MAX_YAML_NODES``
    nodes, or that contains itself. Works on the composed graph, where an alias is a shared node, so
    the cost is the number of distinct nodes, before a single Python object exists."""
    size: dict[int, int] = {}
    open_: set[int] = set()  # nodes on the current path: meeting one again is a cycle
    stack = [(root, False)]
    while stack:
        node, finished = stack.pop()
        k = id(node)
        if finished:
            open_.discard(k)
            size[k] = 1 + sum(size[id(c)] for c in _yaml_children(node))
            if size[k] > MAX_YAML_NODES:
                raise _YamlLimit(f"more than {MAX_YAML_NODES} nodes once aliases are expanded (a recipe has a "
                                 f"few hundred)")
            continue
        if k in size:
            continue
        if k in open_:
            raise _YamlLimit("recursive alias (a node that contains itself)")
        open_.add(k)
        stack.append((node, True))
        stack.extend((c, False) for c in _yaml_children(node) if id(c) not in size)


def _loader_class():
    """``yaml.SafeLoader`` (no tags that run code) that also bounds depth and alias expansion while
    composing, and refuses duplicate keys (PyYAML keeps the last one silently: a reader of the file
    would see the first)."""
    import yaml

    class RecipeLoader(yaml.SafeLoader):
        _depth = 0

        def compose_node(self, parent, index):
            self._depth += 1
            try:
                if self._depth > MAX_YAML_DEPTH:
                    raise _YamlLimit(f"nested deeper than {MAX_YAML_DEPTH} levels "
                                     f"(line {self.peek_event().start_mark.line + 1})")
                return super().compose_node(parent, index)
            finally:
                self._depth -= 1

        def compose_document(self):
            node = super().compose_document()
            _check_expansion(node)
            return node

        def construct_mapping(self, node, deep=False):
            seen = set()
            for key_node, _ in node.value:
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node)
                try:
                    dup = key in seen
                    seen.add(key)
                except TypeError:  # unhashable: SafeConstructor reports it
                    continue
                if dup:
                    raise _YamlLimit(f"duplicate key {_show(key, 60)} (line {key_node.start_mark.line + 1})")
            return super().construct_mapping(node, deep)

    return RecipeLoader


def _yaml_problem(exc: BaseException) -> str:
    """One short line for a YAML error (PyYAML's own messages span lines and quote the file name)."""
    import yaml

    if isinstance(exc, yaml.MarkedYAMLError):
        text = "; ".join(p for p in (exc.context, exc.problem) if p) or "invalid YAML"
        mark = exc.problem_mark or exc.context_mark
        if mark is not None:
            text += f" (line {mark.line + 1}, column {mark.column + 1})"
    elif isinstance(exc, yaml.reader.ReaderError):
        ch = exc.character if isinstance(exc.character, int) else int.from_bytes(exc.character, "big")
        text = f"unacceptable character #x{ch:04x}: {exc.reason} (position {exc.position})"
    elif isinstance(exc, RecursionError):
        text = "nested too deeply"
    else:
        text = str(exc)
    return _cut(" ".join(text.split()), 200)


def _read_recipe_text(path: str) -> str:
    """The file's text, after checks that need no parsing: a regular file, at most
    ``MAX_RECIPE_BYTES``, UTF-8 (a leading byte-order mark is dropped)."""
    check_regular_file(path, "recipe", expected="a YAML file", error=RecipeError)
    base = os.path.basename(path)
    with open(path, "rb") as f:
        raw = f.read(MAX_RECIPE_BYTES + 1)
    if len(raw) > MAX_RECIPE_BYTES:
        raise RecipeError(f"{base}: larger than {MAX_RECIPE_BYTES} bytes (1 MiB); a recipe is a few hundred bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RecipeError(f"{base}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start})") from None
    return text[1:] if text.startswith("\ufeff") else text


def load_recipe(path_or_dict: "str | os.PathLike | Mapping | Recipe") -> Recipe:
    """Load a recipe from a YAML file path, a mapping, or return a ``Recipe`` unchanged.

    A recipe file may come from anyone: it is parsed with a safe loader (no YAML tag constructs
    arbitrary objects or runs code), at most ``MAX_RECIPE_BYTES``, nesting and alias expansion are
    bounded before any Python object is built, duplicate keys are refused, and every message shows
    values cut short.

    Raises:
        FileNotFoundError: the path does not exist.
        IsADirectoryError: the path is a folder.
        RecipeError: unknown keys, bad values, YAML that is not a mapping, or a file that is too large,
            not UTF-8, not a regular file or not valid YAML.
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
    base = os.path.basename(path)
    text = _read_recipe_text(path)
    try:
        data = yaml.load(text, Loader=_loader_class())  # noqa: S506 - a SafeLoader subclass
    except (yaml.YAMLError, _YamlLimit, ValueError, TypeError, OverflowError, RecursionError) as exc:
        # ValueError: e.g. an integer of more than sys.get_int_max_str_digits() digits
        raise RecipeError(f"{base}: not valid YAML: {_yaml_problem(exc)}") from None
    if data is None:
        raise RecipeError(f"{base}: empty recipe (expected a mapping with keys name, model, data, train, pruning)")
    try:
        return Recipe.from_dict(data, source=path)
    except RecipeError as exc:
        raise RecipeError(f"{base}: {exc}") from None
