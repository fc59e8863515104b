"""Sparse modules. Heavy imports (Triton) are deferred until a module is used."""
import importlib

_LAZY = {
    "BlockSparseLinear": "sparse.nn.block_sparse",
}


def __getattr__(name):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'sparse.nn' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = list(_LAZY)
