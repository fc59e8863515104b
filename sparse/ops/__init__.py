"""Dispatching ops (csrc CUDA / csrc CPU / Triton / pure torch); see :mod:`sparse.ops.dispatch`.

The block-sparse matmuls are in :mod:`sparse.ops.block_sparse`, their layout in :mod:`sparse.ops.layout`.
"""
from .dispatch import BACKENDS, BackendUnavailable, Op, forced_backend, last_backend, use_backend
from .layout import BLOCK_SIZES, BlockLayout

__all__ = ["BACKENDS", "BLOCK_SIZES", "BackendUnavailable", "BlockLayout", "Op", "forced_backend", "last_backend",
           "use_backend"]

from .dropout import dropout  # noqa: E402  (the function; the module: importlib.import_module('sparse.ops.dropout'))
__all__ += ["dropout"]

from .sparse24 import compress_24, decompress_24, mask_24, mvue_12, mvue_24  # noqa: E402  (2:4 kernels)
__all__ += ["compress_24", "decompress_24", "mask_24", "mvue_12", "mvue_24"]
