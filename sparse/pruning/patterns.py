"""The pattern API: one small frozen config class per sparsity-pattern kind (torchao style).

Every class answers the same four questions about a weight of any rank >= 2, viewed as
``[out, prod(rest)]`` (conv kernels flattened; N:M groups run along the flattened input dimension):

* ``mask(weight, sparsity=None)`` -> ``torch.bool`` mask of ``weight.shape`` (True = kept);
* ``fits(shape)`` -> ``None`` when a weight of that shape can take the pattern, else why not;
* ``valid(mask, sparsity=None)`` -> whether a mask satisfies the pattern;
* ``describe()`` -> a short label ("2:4", "2:4 transposable", "unstructured 80%", "block 32x32 90%").

``SparseOptimizer``, ``convert``, ``inspect`` and the benchmarks all build masks through these
classes, and :func:`parse_pattern` is the one parser of ``"N:M"`` strings.
"""
from __future__ import annotations

import math
import numbers
import re
from dataclasses import dataclass
from typing import ClassVar, Union

import torch

from .. import masks as M
from ..masks._checks import check_nm, check_weight
from .block import block_mask

__all__ = ["UnstructuredPattern", "NMPattern", "TransposableNMPattern", "BlockPattern", "SparsityPattern",
           "NM_PATTERNS", "parse_pattern", "pattern_from_recipe", "as_2d"]


def as_2d(t: torch.Tensor) -> torch.Tensor:
    """``[out, in, *k]`` -> ``[out, in * prod(k)]`` (a view for contiguous tensors; 2-D unchanged)."""
    return t.reshape(t.shape[0], -1)


def _shape_2d(shape) -> tuple[int, int] | str:
    """``(rows, cols)`` of ``shape`` flattened to 2-D, or why it cannot be (rank < 2, empty)."""
    shape = tuple(int(s) for s in shape)
    if len(shape) < 2:
        return f"expected a weight of rank >= 2, got shape {shape}"
    rows, cols = shape[0], math.prod(shape[1:])
    if rows == 0 or cols == 0:
        return "empty tensor"
    return rows, cols


def _check_sparsity(v, arg: str, *, hi_open: bool) -> float:
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(float(v)):
        raise ValueError(f"{arg}: expected a number in [0, 1{')' if hi_open else ']'}, got {v!r}")
    v = float(v)
    if v < 0.0 or (v >= 1.0 if hi_open else v > 1.0):
        raise ValueError(f"{arg}: expected a number in [0, 1{')' if hi_open else ']'}, got {v}")
    return v


def _bool_mask(mask: torch.Tensor) -> torch.Tensor:
    if not isinstance(mask, torch.Tensor):
        raise ValueError(f"mask: expected a torch.Tensor, got {type(mask).__name__}")
    return mask if mask.dtype == torch.bool else mask != 0


def _weight_2d(weight: torch.Tensor, pattern) -> torch.Tensor:
    """``weight`` as a detached 2-D view; ``ValueError`` naming ``weight`` when it does not fit."""
    if not isinstance(weight, torch.Tensor):
        raise ValueError(f"weight: expected a torch.Tensor, got {type(weight).__name__}")
    why = pattern.fits(tuple(weight.shape))
    if why is not None:
        raise ValueError(f"weight: shape {tuple(weight.shape)} does not fit pattern {pattern.describe()}: {why}")
    return as_2d(weight.detach())


def _nonzero_2d(weight: torch.Tensor) -> torch.Tensor:
    """Which entries are non-zero, ``[out, prod(rest)]`` bool (a bool tensor is taken as that already)."""
    w = as_2d(weight)
    return w if w.dtype == torch.bool else w != 0


def _percent(s: float) -> str:
    return f"{100 * s:g}%"


@dataclass(frozen=True)
class UnstructuredPattern:
    """Drop the ``sparsity`` fraction of smallest ``|w|`` over the whole weight.

    ``mask`` keeps exactly ``numel - round(sparsity * numel)`` entries; ties are broken by a stable
    sort, so among equal magnitudes the lower flat index is pruned first (deterministic on every rank).
    """
    sparsity: float
    transposable: ClassVar[bool] = False

    def __post_init__(self):
        object.__setattr__(self, "sparsity", _check_sparsity(self.sparsity, "sparsity", hi_open=False))

    @property
    def target_sparsity(self) -> float:
        return self.sparsity

    def fits(self, shape) -> str | None:
        s = _shape_2d(shape)
        return s if isinstance(s, str) else None

    def mask(self, weight: torch.Tensor, sparsity: float | None = None) -> torch.Tensor:
        """Args: ``weight`` float tensor of rank >= 2; ``sparsity`` overrides the config's (gradual
        schedules). Returns ``torch.bool`` of ``weight.shape`` on ``weight``'s device."""
        s = self.sparsity if sparsity is None else _check_sparsity(sparsity, "sparsity", hi_open=False)
        w = check_weight(_weight_2d(weight, self))
        flat = w.float().abs().flatten() if w.dtype != torch.float64 else w.abs().flatten()
        drop = int(math.floor(s * flat.numel() + 0.5))
        mask = torch.ones(flat.numel(), dtype=torch.bool, device=w.device)
        if drop > 0:
            order = torch.sort(flat, stable=True).indices  # ascending: the first ``drop`` are pruned
            mask[order[:drop]] = False
        return mask.reshape(weight.shape)

    def valid(self, mask: torch.Tensor, sparsity: float | None = None) -> bool:
        """At least ``round(sparsity * numel)`` entries pruned."""
        s = self.sparsity if sparsity is None else _check_sparsity(sparsity, "sparsity", hi_open=False)
        mk = _bool_mask(mask)
        if self.fits(tuple(mk.shape)) is not None:
            return False
        return int((~mk).sum()) >= math.floor(s * mk.numel() + 0.5)

    def conforms(self, weight: torch.Tensor) -> bool:
        """Whether ``weight`` already has the pattern (zeros make up at least the sparsity).

        ``weight``: any tensor of rank >= 2, or a ``torch.bool`` tensor of which entries are non-zero
        (as every ``conforms`` takes, so that one ``!= 0`` pass serves several patterns)."""
        return self.valid(_nonzero_2d(weight))

    def describe(self) -> str:
        return f"unstructured {_percent(self.sparsity)}"


@dataclass(frozen=True)
class NMPattern:
    """Keep the ``n`` largest ``|w|`` of every ``m`` consecutive weights along the input dimension
    (``1 <= n < m <= 32``; ties towards the lower index). Its sparsity is fixed: ``1 - n/m``."""
    n: int
    m: int
    transposable: ClassVar[bool] = False

    def __post_init__(self):
        n, m = check_nm(self.n, self.m)
        object.__setattr__(self, "n", n)
        object.__setattr__(self, "m", m)

    @property
    def target_sparsity(self) -> float:
        return 1.0 - self.n / self.m

    def fits(self, shape) -> str | None:
        s = _shape_2d(shape)
        if isinstance(s, str):
            return s
        if s[1] % self.m:
            return f"in_features {s[1]} is not divisible by m={self.m}"
        return None

    def mask(self, weight: torch.Tensor, sparsity: float | None = None) -> torch.Tensor:
        """``torch.bool`` of ``weight.shape`` (rank >= 2, float). ``sparsity`` is ignored: an N:M
        pattern's sparsity is fixed (the argument keeps one signature for every pattern)."""
        return M.nm_mask(_weight_2d(weight, self), self.n, self.m, dim=1).reshape(weight.shape)

    def valid(self, mask: torch.Tensor, sparsity: float | None = None) -> bool:
        """Exactly ``n`` kept in every group of ``m`` along the input dimension."""
        mk = _bool_mask(mask)
        if self.fits(tuple(mk.shape)) is not None:
            return False
        return bool(M.is_nm(as_2d(mk), self.n, self.m, dim=1))

    def conforms(self, weight: torch.Tensor) -> bool:
        """Whether ``weight`` already has the pattern: at most ``n`` non-zeros per group (a zero may
        stand for a kept weight)."""
        if self.fits(tuple(weight.shape)) is not None:
            return False
        nz = _nonzero_2d(weight)
        return bool((nz.reshape(nz.shape[0], -1, self.m).sum(-1) <= self.n).all())

    def describe(self) -> str:
        return f"{self.n}:{self.m}"


@dataclass(frozen=True)
class TransposableNMPattern:
    """Every aligned ``m x m`` tile keeps exactly ``n`` per row and per column, so W and W^T are both
    N:M. ``method``: a :data:`sparse.masks.METHODS` name (see :func:`sparse.masks.transposable_mask`)."""
    n: int
    m: int
    method: str = "auto"
    transposable: ClassVar[bool] = True

    def __post_init__(self):
        n, m = check_nm(self.n, self.m)
        object.__setattr__(self, "n", n)
        object.__setattr__(self, "m", m)
        if not isinstance(self.method, str) or self.method not in M.METHODS:
            raise ValueError(f"method: expected one of {', '.join(M.METHODS)}, got {self.method!r}")

    target_sparsity = NMPattern.target_sparsity

    def fits(self, shape) -> str | None:
        why = NMPattern.fits(self, shape)  # the 1-D N:M reasons first, then the tile's rows
        if why is not None:
            return why
        s = _shape_2d(shape)
        if s[0] % self.m:
            return f"out_features {s[0]} is not divisible by m={self.m} (transposable tiles are m x m)"
        return None

    def mask(self, weight: torch.Tensor, sparsity: float | None = None) -> torch.Tensor:
        """``torch.bool`` of ``weight.shape`` (rank >= 2, float). ``sparsity`` is ignored (fixed)."""
        w = _weight_2d(weight, self)
        return M.transposable_mask(w, self.n, self.m, method=self.method).reshape(weight.shape)

    def valid(self, mask: torch.Tensor, sparsity: float | None = None) -> bool:
        mk = _bool_mask(mask)
        if self.fits(tuple(mk.shape)) is not None:
            return False
        return bool(M.is_transposable(as_2d(mk), self.n, self.m))

    def conforms(self, weight: torch.Tensor) -> bool:
        """Whether ``weight`` already has the pattern: every tile has at most ``n`` non-zeros per row
        and per column."""
        if self.fits(tuple(weight.shape)) is not None:
            return False
        nz = _nonzero_2d(weight)
        r, c = nz.shape
        t = nz.reshape(r // self.m, self.m, c // self.m, self.m)
        return bool((t.sum(3) <= self.n).all()) and bool((t.sum(1) <= self.n).all())

    def describe(self) -> str:
        return f"{self.n}:{self.m} transposable"


@dataclass(frozen=True)
class BlockPattern:
    """Drop the ``sparsity`` fraction of ``block = (rows, cols)`` blocks with the smallest L1 norm
    (``round`` of the block count, at least one block kept; ties: lower block index kept)."""
    block: tuple[int, int]
    sparsity: float

    transposable: ClassVar[bool] = False

    def __post_init__(self):
        blk = self.block
        if not isinstance(blk, (tuple, list)) or len(blk) != 2 or any(
                isinstance(b, bool) or not isinstance(b, numbers.Integral) or b < 1 for b in blk):
            raise ValueError(f"block: expected (rows, cols) with two integers >= 1, got {blk!r}")
        object.__setattr__(self, "block", (int(blk[0]), int(blk[1])))
        object.__setattr__(self, "sparsity", _check_sparsity(self.sparsity, "sparsity", hi_open=True))

    @property
    def target_sparsity(self) -> float:
        return self.sparsity

    def fits(self, shape) -> str | None:
        s = _shape_2d(shape)
        if isinstance(s, str):
            return s
        r, c = self.block
        if s[0] % r or s[1] % c:
            return f"shape [{s[0]}, {s[1]}] is not divisible by the block {r}x{c}"
        return None

    def mask(self, weight: torch.Tensor, sparsity: float | None = None) -> torch.Tensor:
        """``torch.bool`` of ``weight.shape``; ``sparsity`` (in [0, 1)) overrides the config's."""
        s = self.sparsity if sparsity is None else _check_sparsity(sparsity, "sparsity", hi_open=True)
        w = check_weight(_weight_2d(weight, self))
        return block_mask(w, self.block[0], self.block[1], s).reshape(weight.shape)

    def valid(self, mask: torch.Tensor, sparsity: float | None = None) -> bool:
        """Whole blocks kept or dropped, and the dropped count within one of ``round(sparsity * blocks)``."""
        s = self.sparsity if sparsity is None else _check_sparsity(sparsity, "sparsity", hi_open=True)
        mk = _bool_mask(mask)
        if self.fits(tuple(mk.shape)) is not None:
            return False
        m2 = as_2d(mk)
        r, c = self.block
        blocks = m2.reshape(m2.shape[0] // r, r, m2.shape[1] // c, c)
        full = blocks.all(dim=(1, 3))
        if not bool((full | ~blocks.any(dim=(1, 3))).all()):
            return False
        total = full.numel()
        dropped = total - int(full.sum())
        return abs(dropped - math.floor(s * total + 0.5)) <= 1

    def conforms(self, weight: torch.Tensor) -> bool:
        """Whether ``weight``'s non-zeros lie in at most ``total - round(sparsity * total)`` blocks."""
        if self.fits(tuple(weight.shape)) is not None:
            return False
        nz = _nonzero_2d(weight)
        r, c = self.block
        used = nz.reshape(nz.shape[0] // r, r, nz.shape[1] // c, c).any(dim=(1, 3))
        total = used.numel()
        return int(used.sum()) <= max(total - math.floor(self.sparsity * total + 0.5), 1)

    def describe(self) -> str:
        return f"block {self.block[0]}x{self.block[1]} {_percent(self.sparsity)}"


SparsityPattern = Union[UnstructuredPattern, NMPattern, TransposableNMPattern, BlockPattern]
NM_PATTERNS: tuple[type, ...] = (NMPattern, TransposableNMPattern)

_NM_TEXT = re.compile(r"\s*(?P<n>[0-9]+)\s*:\s*(?P<m>[0-9]+)\s*(?P<t>[tT]?)\s*")


def parse_pattern(text, *, transposable: bool = False, method: str = "auto",
                  name: str = "pattern") -> NMPattern | TransposableNMPattern:
    """The one parser of N:M pattern strings.

    Args:
        text: ``"N:M"`` (e.g. ``"2:4"``), or ``"N:MT"`` (e.g. ``"2:4T"``) for transposable N:M; an
            ``NMPattern``/``TransposableNMPattern`` is passed through.
        transposable: make the result transposable even without the ``T`` suffix.
        method: the transposable mask method (``sparse.masks.METHODS``).
        name: the argument named in error messages (e.g. ``"--pattern"`` for a CLI).

    Returns:
        :class:`NMPattern`, or :class:`TransposableNMPattern` when transposable.

    Raises:
        ValueError: naming ``name``, what was expected and what was given.
    """
    if not isinstance(transposable, bool):
        raise ValueError(f"transposable: expected a bool, got {transposable!r}")
    if not isinstance(method, str) or method not in M.METHODS:
        raise ValueError(f"method: expected one of {', '.join(M.METHODS)}, got {method!r}")
    if isinstance(text, TransposableNMPattern):
        return text
    if isinstance(text, NMPattern):
        return TransposableNMPattern(text.n, text.m, method) if transposable else text
    expected = f"{name}: expected N:M (or N:MT for transposable) with integers 1 <= N < M <= 32, e.g. 2:4"
    if not isinstance(text, str):
        raise ValueError(f"{expected}, got {type(text).__name__} {text!r}")
    match = _NM_TEXT.fullmatch(text)
    if match is None:
        raise ValueError(f"{expected}, got {text!r}")
    n, m = int(match["n"]), int(match["m"])
    transposable = transposable or bool(match["t"])
    if not 1 <= n < m <= 32:
        raise ValueError(f"{expected}, got {text!r} (N={n}, M={m})")
    return TransposableNMPattern(n, m, method) if transposable else NMPattern(n, m)


def pattern_from_recipe(pattern) -> SparsityPattern:
    """The pattern object of a recipe's :class:`sparse.recipe.Pattern` (kind ``nm``, ``unstructured``
    or ``block``); ``pattern`` objects of this module are returned unchanged."""
    if isinstance(pattern, (UnstructuredPattern, NMPattern, TransposableNMPattern, BlockPattern)):
        return pattern
    kind = getattr(pattern, "kind", None)
    if kind == "nm":
        if pattern.transposable:
            return TransposableNMPattern(pattern.n, pattern.m, pattern.solver)
        return NMPattern(pattern.n, pattern.m)
    if kind == "unstructured":
        return UnstructuredPattern(pattern.sparsity)
    if kind == "block":
        return BlockPattern(tuple(pattern.block), pattern.sparsity)
    raise ValueError(f"pattern: expected a recipe Pattern of kind nm, unstructured or block, got {pattern!r}")
