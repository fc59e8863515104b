"""Dispatching ops (csrc CUDA / csrc CPU / Triton / pure torch); see :mod:`sparse.ops.dispatch`."""
from .dispatch import BACKENDS, BackendUnavailable, Op, forced_backend, last_backend, use_backend

__all__ = ["BACKENDS", "BackendUnavailable", "Op", "forced_backend", "last_backend", "use_backend"]
