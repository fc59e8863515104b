"""Which tensors are converted: Linear (2-D) and conv (3-/4-D, flattened) weights, by name.

Default selection: every floating weight named ``*.weight`` with 2-4 dims except embeddings,
norms and heads (``lm_head``, ``classifier``, ``pooler``, ...). ``include`` patterns *replace*
that default (any tensor whose name matches one of them, still only floating 2-4-D weights);
``exclude`` patterns are removed afterwards. Patterns are Python regexes matched with ``re.search``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch

from ..policy import DENSE_TENSOR_REGEXES

# The layer policy (sparse.policy), by tensor name: embeddings, norms, heads and poolers stay dense.
DEFAULT_EXCLUDE: tuple[str, ...] = DENSE_TENSOR_REGEXES


def _compile(patterns, arg: str) -> list[re.Pattern]:
    out = []
    for p in patterns:
        try:
            out.append(re.compile(p))
        except re.error as exc:
            raise ValueError(f"{arg}: invalid regular expression {p!r}: {exc}") from None
    return out


@dataclass
class TargetFilter:
    include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)

    def __post_init__(self):
        self._inc = _compile(self.include, "include")
        self._exc = _compile(self.exclude, "exclude")
        self._default_exc = _compile(DEFAULT_EXCLUDE, "exclude")

    def wanted(self, name: str, dtype: torch.dtype, shape: tuple[int, ...]) -> bool:
        """True when ``name`` is selected by the patterns and is a convertible weight kind."""
        if not (dtype.is_floating_point and 2 <= len(shape) <= 4 and dtype.itemsize >= 2):
            return False
        if self._inc:
            if not any(p.search(name) for p in self._inc):
                return False
        else:
            if not name.endswith("weight") or any(p.search(name) for p in self._default_exc):
                return False
        return not any(p.search(name) for p in self._exc)
