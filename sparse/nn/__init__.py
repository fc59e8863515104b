"""Sparse modules: :class:`BlockSparseLinear` (block-sparse weight, dispatched block-sparse matmuls)."""
from .block_sparse import BlockSparseLinear

__all__ = ["BlockSparseLinear"]
from .dropout import Dropout, use_fast_dropout  # noqa: E402
__all__ += ["Dropout", "use_fast_dropout"]
