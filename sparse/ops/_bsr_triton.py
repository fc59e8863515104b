"""Backend ``triton`` of the block-sparse matmuls: :mod:`triton_kernels` fed with a layout's tensors.

The only module of :mod:`sparse` that imports :mod:`triton_kernels`, and only when a call runs here, so
``import sparse`` works where triton (or the kernels' package) is missing. Same signatures and
semantics as the public functions of :mod:`sparse.ops.block_sparse`; arguments are already checked.
"""
from __future__ import annotations

import importlib.util
import os

import torch

from .dispatch import forced_backend
from .layout import BlockLayout


def _interpreting() -> bool:
    # Read here rather than from triton_kernels.interpreting(): deciding usability imports nothing.
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def usable(*args, **kwargs) -> str | None:
    """None if the Triton kernels can run a call with these tensors, else the reason (for the dispatcher)."""
    for name in ("triton", "triton_kernels"):
        try:
            if importlib.util.find_spec(name) is None:
                return f"{name} is not installed"
        except (ImportError, ValueError) as exc:  # a broken or blocked package
            return f"{name} is not importable ({exc})"
    dev = next(a.device for a in args if isinstance(a, torch.Tensor))
    if dev.type == "cuda":
        return None
    # The interpreter is for tests: it runs CPU tensors only when the backend is asked for by name.
    if _interpreting() and forced_backend() == "triton":
        return None
    return (f"tensors on {dev}: the Triton kernels need CUDA (on CPU only under TRITON_INTERPRET=1 "
            "with the triton backend forced)")


def _kernels():
    import triton_kernels

    return triton_kernels


def _sparse(layout: BlockLayout) -> tuple:
    return layout.shape, layout.block, layout.crow, layout.col, layout.ccol, layout.row_t, layout.perm_t


def dds(a: torch.Tensor, b_data: torch.Tensor, layout: BlockLayout, trans_a: bool = False,
        trans_b: bool = False) -> torch.Tensor:
    return _kernels().dds(a, b_data, *_sparse(layout), trans_a, trans_b)


def dsd(a_data: torch.Tensor, layout: BlockLayout, b: torch.Tensor, trans_a: bool = False,
        trans_b: bool = False) -> torch.Tensor:
    return _kernels().dsd(a_data, *_sparse(layout), b, trans_a, trans_b)


def sdd(a: torch.Tensor, b: torch.Tensor, layout: BlockLayout, trans_a: bool = False,
        trans_b: bool = False) -> torch.Tensor:
    return _kernels().sdd(a, b, layout.shape, layout.block, layout.row, layout.col, trans_a, trans_b)
