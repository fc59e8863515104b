"""Triton block-sparse kernels and their launchers (no model logic).

``import triton_kernels`` does not import triton: the kernels are compiled on first launch.
"""
from .block_sparse import dds, dsd, interpreting, sdd
from .layout import BLOCK_SIZES, BlockLayout

__all__ = ["BLOCK_SIZES", "BlockLayout", "dds", "dsd", "interpreting", "sdd"]
