"""Structured-sparsity training for PyTorch.

``import sparse`` never fails for lack of an optional backend (the C++/CUDA extension, Triton,
transformers); :func:`sparse.backends` says what is available and why not.
"""
from __future__ import annotations

import importlib

from ._backends import backends
from . import masks

__version__ = "0.1.0"

# Public names that live in modules with heavier imports: resolved on first use.
_LAZY = {
    "load_recipe": "sparse.recipe",
    "Recipe": "sparse.recipe",
    "RecipeError": "sparse.recipe",
    "SparseOptimizer": "sparse.optim",
    "convert_checkpoint": "sparse.convert",
    "nn": "sparse.nn",
    "ops": "sparse.ops",
    "mlpruning": "sparse.mlpruning",
}


def __getattr__(name):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'sparse' has no attribute {name!r}")
    mod = importlib.import_module(module)
    value = mod if module.endswith("." + name) else getattr(mod, name)
    globals()[name] = value
    return value


__all__ = ["backends", "masks", "__version__", *_LAZY]
