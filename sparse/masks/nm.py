"""1-D N:M masks: keep the n largest |w| of every m consecutive weights along one dimension."""
from __future__ import annotations

import torch

from ._checks import check_dim, check_nm, check_weight, native_operand, pad_to_multiple, scores
from .._backends import ext
from ..ops.dispatch import Op

nm_op = Op("nm_mask")


def _ext_on(device_type: str):
    def usable(w: torch.Tensor, n: int, m: int) -> str | None:
        mod = ext()
        if mod is None:
            return "sparse._C not built"
        if w.device.type != device_type:
            return f"input is on {w.device.type}, not {device_type}"
        if device_type == "cuda" and not mod.with_cuda():
            return "sparse._C built without CUDA"
        return None
    return usable


@nm_op.register("csrc-cuda", _ext_on("cuda"))
@nm_op.register("csrc-cpu", _ext_on("cpu"))
def _nm_ext(w: torch.Tensor, n: int, m: int) -> torch.Tensor:
    return ext().nm_mask(native_operand(w), n, m)  # bool from csrc


@nm_op.register("torch")
def _nm_torch(w: torch.Tensor, n: int, m: int) -> torch.Tensor:
    s = scores(w).reshape(-1, m)
    # Stable descending sort: equal magnitudes keep their index order, so ties are deterministic.
    order = torch.sort(s, dim=1, descending=True, stable=True).indices[:, :n]
    return torch.zeros_like(s, dtype=torch.bool).scatter_(1, order, True).reshape(w.shape)


def nm_mask(weight: torch.Tensor, n: int, m: int, dim: int = 1, *, pad: bool = False) -> torch.Tensor:
    """N:M mask of a 2-D weight.

    Args:
        weight: ``[out_features, in_features]`` float tensor, any device. fp64 is compared in fp64 and
            every other float dtype in fp32 (exact for fp16/bf16/float8), on every backend alike.
        n, m: keep ``n`` of every ``m`` consecutive weights, ``1 <= n < m <= 32``.
        dim: dimension the groups run along (1: along ``in_features``, the hardware layout).
        pad: allow a size along ``dim`` not divisible by ``m`` (tail treated as zero-padded).

    Returns:
        ``torch.bool`` tensor of ``weight``'s shape and device; exactly ``n`` True per full group.
        Ties are broken deterministically towards the lower index.
    """
    weight = check_weight(weight)
    n, m = check_nm(n, m)
    dim = check_dim(dim)
    rows, cols = weight.shape
    w = weight if dim == 1 else weight.t()
    w = pad_to_multiple(w.detach(), m, (1,), pad)
    mask = nm_op(w, n, m)
    if dim == 0:
        return mask[:cols, :rows].t().contiguous()
    return mask[:rows, :cols].contiguous()
