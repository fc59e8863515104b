"""Pruning building blocks used by :class:`sparse.SparseOptimizer`: target selection (module
filters), magnitude masks per pattern, block masks, schedules and SR-STE."""
