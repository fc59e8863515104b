"""Sparse modules: :class:`BlockSparseLinear` (block-sparse weight, dispatched block-sparse matmuls)."""
from .block_sparse import BlockSparseLinear

__all__ = ["BlockSparseLinear"]
from .dropout import Dropout, use_fast_dropout  # noqa: E402
__all__ += ["Dropout", "use_fast_dropout"]
from .sparse24 import SparseLinear24, Sparsify24Report, sparsify_24  # noqa: E402
__all__ += ["SparseLinear24", "Sparsify24Report", "sparsify_24"]
