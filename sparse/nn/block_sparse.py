"""``BlockSparseLinear``: a Linear layer whose weight keeps only some ``B x B`` blocks.

The weight is stored compactly as ``weight_data [nnz, B, B]`` (row-major block order) with its
:class:`~sparse.ops.layout.BlockLayout` index tensors as buffers; forward and both gradients run through
:mod:`sparse.ops.block_sparse` (DDS forward ``y = x W^T``, DDS ``dX = dY W``, SDD ``dW`` on the kept
blocks only), so pruned blocks take no memory and can never be revived by an optimizer. Speed: the
Triton kernels on CUDA skip pruned blocks; on the CPU the C++ kernels of ``sparse._C`` (AMX tiles for
bf16, fed straight from the activations) beat a dense bf16 ``nn.Linear`` from moderate block sparsity
on (figures: ``sparse bench blocksparse``), while the pure-torch fallback (backend ``torch``, used when
the extension is not built) is slower than dense (see :mod:`sparse.ops._bsr_cpu`).
"""
from __future__ import annotations

import math
import numbers

import numpy as np
import torch
import torch.nn as nn

from ..ops import block_sparse as bs_ops
from ..ops.layout import BLOCK_SIZES, DTYPES, BlockLayout, _validate, check_block_mask

_LAYOUT_BUFFERS = ("crow", "col", "row", "ccol", "row_t", "perm_t")


class BlockSparseLinear(nn.Module):
    """``y = x @ W^T + bias`` with block-sparse ``W [out_features, in_features]``.

    Args:
        in_features, out_features: dense sizes, multiples of the block size.
        block_mask: ``torch.bool [out_features / B, in_features / B]``; True = block kept. The block
            size ``B`` is inferred (``out_features / rows == in_features / cols``, one of 16/32/64/128).
        bias: learn an additive bias ``[out_features]``.

    Parameters: ``weight_data [nnz, B, B]``, ``bias [out_features]``. Input ``x [..., in_features]``
    (any leading shape, the parameters' dtype: fp32/fp16/bf16); output ``[..., out_features]``.

    State dicts are untrusted input: :meth:`load_state_dict` checks every layout buffer (dtype, shape,
    pointers, index ranges, no duplicate blocks, transpose metadata) and ``weight_data``'s shape before
    anything is copied, and raises ``ValueError`` naming the buffer; a refused state dict leaves the
    module as it was. Buffers edited in place later are checked again at the next forward.
    """

    def __init__(self, in_features: int, out_features: int, block_mask: torch.Tensor, bias: bool = True,
                 device=None, dtype=None):
        super().__init__()
        in_features = _positive_int(in_features, "in_features")
        out_features = _positive_int(out_features, "out_features")
        if not isinstance(bias, (bool, np.bool_)):
            raise ValueError(f"bias: expected True or False, got {type(bias).__name__} {bias!r}")
        if dtype is not None and dtype not in DTYPES:
            raise ValueError(f"dtype: expected a floating-point dtype float32, float16 or bfloat16, got {dtype}")
        block = _infer_block(block_mask, out_features, in_features)
        layout = BlockLayout.from_mask(block_mask.to(device) if device is not None else block_mask, block)
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        self.block = block
        for name, t in zip(_LAYOUT_BUFFERS, layout.tensors()):
            self.register_buffer(name, t)
        factory = {"device": layout.device if device is None else device, "dtype": dtype}
        self.weight_data = nn.Parameter(torch.empty(layout.nnz, block, block, **factory))
        self.bias = nn.Parameter(torch.empty(out_features, **factory)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # nn.Linear's init on the dense weight, restricted to the kept blocks (same fan-in bound).
        bound = 1.0 / math.sqrt(self.in_features) if self.in_features > 0 else 0.0
        with torch.no_grad():
            self.weight_data.uniform_(-bound, bound)
            if self.bias is not None:
                self.bias.uniform_(-bound, bound)

    # ------------------------------------------------------------------ conversion
    @classmethod
    def from_dense(cls, linear: nn.Linear, block_mask: torch.Tensor) -> "BlockSparseLinear":
        """The kept blocks of ``linear.weight`` (and its bias), on the Linear's device and dtype."""
        if not isinstance(linear, nn.Linear):
            raise ValueError(f"linear: expected a torch.nn.Linear, got {type(linear).__name__}")
        w = linear.weight
        if w.device.type == "meta":
            raise ValueError("linear: expected a Linear with data (CPU or CUDA), got one on the meta device")
        if w.dtype not in DTYPES:
            raise ValueError(f"linear: expected a float32, float16 or bfloat16 Linear, got {w.dtype}")
        _infer_block(block_mask, linear.out_features, linear.in_features)
        mod = cls(linear.in_features, linear.out_features, block_mask.to(w.device), bias=linear.bias is not None,
                  device=w.device, dtype=w.dtype)
        with torch.no_grad():
            mod.weight_data.copy_(mod.layout().from_dense(w.detach()))
            if linear.bias is not None:
                mod.bias.copy_(linear.bias.detach())
        return mod

    def layout(self) -> BlockLayout:
        """The block layout, built from this module's buffers (follows ``.to(device)``).

        Cached on the module per buffer state (identity and version counter of the six index buffers), so
        a forward does not rebuild it; ``.to()``, ``load_state_dict``, a buffer replaced or written in place
        give a new one. The ops validate the layout's values once per state (``ensure_validated``).
        """
        tensors = tuple(getattr(self, n) for n in _LAYOUT_BUFFERS)
        key = _buffer_state(tensors)
        cached = self.__dict__.get("_layout_cache")
        if key is not None and cached is not None and cached[0] == key:
            return cached[1]
        lay = BlockLayout.from_tensors(self.block, (self.out_features, self.in_features), tensors, validate=False)
        # The cached layout holds the buffers it was built from, so their ids cannot be reused while cached.
        self.__dict__["_layout_cache"] = (key, lay) if key is not None else None
        return lay

    @property
    def block_mask(self) -> torch.Tensor:
        """``torch.bool [out/B, in/B]``: the kept blocks."""
        return self.layout().mask()

    def dense_weight(self) -> torch.Tensor:
        """The dense weight ``[out_features, in_features]`` with zeros in the pruned blocks."""
        return self.layout().to_dense(self.weight_data)

    def to_dense(self) -> nn.Linear:
        """An ``nn.Linear`` with the same outputs (pruned blocks as zeros), same device and dtype."""
        w = self.weight_data
        lin = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device=w.device,
                        dtype=w.dtype)
        with torch.no_grad():
            lin.weight.copy_(self.dense_weight())
            if self.bias is not None:
                lin.bias.copy_(self.bias)
        return lin

    # ------------------------------------------------------------------ loading
    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        # Before torch copies anything: an index buffer from a file decides which memory the kernels touch.
        self._check_incoming(state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def _check_incoming(self, state_dict, prefix: str) -> None:
        """The layout this module would have after loading ``state_dict`` (incoming buffers, the module's
        own where a key is missing), validated like a new layout; ``weight_data`` and ``bias`` against it."""
        def incoming(name):
            key = prefix + name
            return state_dict[key] if key in state_dict else getattr(self, name)

        tensors = []
        for name in _LAYOUT_BUFFERS:
            t = incoming(name)
            if isinstance(t, torch.Tensor) and t.device.type == "meta":
                raise ValueError(f"{prefix}{name}: expected a tensor with data, got a meta tensor")
            # on the CPU for the check: a partial state dict may mix file tensors with the module's
            tensors.append(t.detach().to("cpu") if isinstance(t, torch.Tensor) else t)
        lay = BlockLayout.from_tensors(self.block, (self.out_features, self.in_features), tensors, validate=False)
        _validate(lay, prefix)
        data = incoming("weight_data")
        if not isinstance(data, torch.Tensor) or not data.is_floating_point():
            got = data.dtype if isinstance(data, torch.Tensor) else type(data).__name__
            raise ValueError(f"{prefix}weight_data: expected a floating-point tensor [nnz, B, B], got {got}")
        if tuple(data.shape) != (lay.nnz, self.block, self.block):
            raise ValueError(f"{prefix}weight_data: expected block data of shape [{lay.nnz}, {self.block}, "
                             f"{self.block}] (nnz from {prefix}col), got {tuple(data.shape)}")
        if self.bias is not None and prefix + "bias" in state_dict:
            b = state_dict[prefix + "bias"]
            if not isinstance(b, torch.Tensor) or not b.is_floating_point() or tuple(b.shape) != (self.out_features,):
                got = f"{b.dtype} {tuple(b.shape)}" if isinstance(b, torch.Tensor) else type(b).__name__
                raise ValueError(f"{prefix}bias: expected a floating-point tensor [{self.out_features}], got {got}")

    # ------------------------------------------------------------------ compute
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.dim() < 1 or x.shape[-1] != self.in_features:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x: expected a tensor [..., in_features={self.in_features}], got {got}")
        if x.device != self.weight_data.device:
            raise ValueError(f"x: expected a tensor on the layer's device {self.weight_data.device}, got {x.device}")
        w, b = self.weight_data, self.bias
        kind = x.device.type
        if torch.is_autocast_enabled(kind):
            # Follow autocast as nn.Linear does (autocast does not know the custom op): the master block
            # data, bias and input are cast to the autocast dtype, gradients flow back to the masters.
            dt = torch.get_autocast_dtype(kind)
            if x.dtype.is_floating_point and (x.dtype != dt or w.dtype != dt):
                x, w = x.to(dt), w.to(dt)
                b = b.to(dt) if b is not None else None
        if x.dtype != w.dtype:
            raise ValueError(f"x: expected dtype {w.dtype} (the layer's), got {x.dtype}")
        lead = x.shape[:-1]
        # Leading dims folded into rows: one large GEMM and dW reduced over all tokens by the SDD itself.
        y = bs_ops.linear(x.reshape(-1, self.in_features), w, b, self.layout())
        return y.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        r, c = self.out_features // self.block, self.in_features // self.block
        density = self.weight_data.shape[0] / max(r * c, 1)
        return (f"in_features={self.in_features}, out_features={self.out_features}, block={self.block}, "
                f"blocks={self.weight_data.shape[0]}/{r * c} (density {density:.3f}), bias={self.bias is not None}")


def _buffer_state(tensors) -> tuple | None:
    """(ids, versions) of the layout buffers, or None when one has no version counter (inference tensors)
    or is not a tensor: then nothing is cached."""
    if not all(isinstance(t, torch.Tensor) and not t.is_inference() for t in tensors):
        return None
    return tuple(id(t) for t in tensors), tuple(t._version for t in tensors)


def _positive_int(v, name: str) -> int:
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Integral) or v <= 0:
        raise ValueError(f"{name}: expected a positive int, got {type(v).__name__} {v!r}")
    return int(v)


def _infer_block(block_mask, out_features: int, in_features: int) -> int:
    check_block_mask(block_mask, "[out/B, in/B]")
    r, c = block_mask.shape
    if r == 0 or c == 0 or out_features % r or in_features % c or out_features // r != in_features // c:
        raise ValueError(f"block_mask: expected shape [out/B, in/B] for one square block size B in {BLOCK_SIZES} "
                         f"(out_features={out_features}, in_features={in_features}), got {tuple(block_mask.shape)}")
    block = out_features // r
    if block not in BLOCK_SIZES:
        raise ValueError(f"block_mask: shape {tuple(block_mask.shape)} implies block size {block} for a "
                         f"{out_features}x{in_features} weight; expected one of {BLOCK_SIZES}")
    return block
