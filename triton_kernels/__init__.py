"""Triton block-sparse kernels and their launchers: tensors and integers in, tensors out.

A leaf package: it knows nothing of models or of the library that calls it.
``import triton_kernels`` does not import triton: the kernels are compiled on first launch.
"""
from .block_sparse import dds, dsd, interpreting, sdd

__all__ = ["dds", "dsd", "interpreting", "sdd"]
