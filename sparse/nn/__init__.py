"""Sparse modules: :class:`BlockSparseLinear` (block-sparse weight, dispatched block-sparse matmuls)."""
from .block_sparse import BlockSparseLinear

__all__ = ["BlockSparseLinear"]
