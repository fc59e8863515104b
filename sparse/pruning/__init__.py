"""Pruning building blocks used by :class:`sparse.SparseOptimizer` and ``convert``: the pattern API
(one class per pattern kind, :mod:`sparse.pruning.patterns`), target selection (module filters),
block masks, schedules, and the optimizer-state tidying of pruned entries."""
from .patterns import (NM_PATTERNS, BlockPattern, NMPattern, SparsityPattern, TransposableNMPattern,
                       UnstructuredPattern, parse_pattern, pattern_from_recipe)

__all__ = ["UnstructuredPattern", "NMPattern", "TransposableNMPattern", "BlockPattern", "SparsityPattern",
           "NM_PATTERNS", "parse_pattern", "pattern_from_recipe"]
