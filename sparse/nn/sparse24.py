"""2:4 sparse Linear: :class:`SparseLinear24` and :func:`sparsify_24`.

``y = x W^T + b`` with a 2:4 (by default exact transposable 2:4) mask on ``W [out, in]``:

* forward through compressed ``W`` (:func:`sparse.ops.compress_24`, CUTLASS layout);
* input gradient ``dX = dY W`` through compressed ``W^T``, valid because a transposable mask makes ``W^T`` 2:4
  along its rows too (with ``transposable=False`` it goes through the decompressed ``W``);
* weight gradient ``dW = (dY^T X) * mask`` dense, or with ``grad_sparsity="mvue"`` from ``mvue_24(dY^T)`` (unbiased
  2:4 along the token dimension, so ``E[dW]`` is the dense gradient; the sparse operand of the ``dW`` GEMM).

On CUDA with fp16/bf16 (or CUDA autocast to them) the matmuls are torch's CUTLASS 2:4 GEMM
``torch._sparse_semi_structured_mm`` on this project's values + metadata as they are (no conversion); tokens are
zero-padded to a multiple of 8 as torch's own semi-structured linear does. Everywhere else (CPU, fp32) the
fallback is masked dense with the compressed numerics: ``W_eff = decompress_24(compress_24(W * mask))`` (exactly
``W * mask``), matmuls in ``x``'s dtype.

The weight stays one dense-shaped ``nn.Parameter`` (the Linear's own, masked in place by :meth:`from_dense`), so any
optimizer and :class:`sparse.SparseOptimizer` step it unchanged. The compressed form is rebuilt lazily when the
weight changed (``weight._version``: the cheap row compression of ``W * mask`` and of its transpose, no mask
search) and the mask only when :meth:`SparseLinear24.set_mask` is called: by the user, or by ``SparseOptimizer``
whenever it refreshes this weight's mask (``sparse.pruning.optim_state`` notifies the module; a mask that is not
2:4, or not transposable for a transposable module, raises ``ValueError`` there).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from torch.utils.weak import WeakIdKeyDictionary

from ..ops import sparse24 as ops24

log = logging.getLogger(__name__)

__all__ = ["SparseLinear24", "sparsify_24", "Sparsify24Report", "eligibility_24", "notify_mask_change",
           "GRAD_SPARSITY"]

GRAD_SPARSITY = (None, "mvue")
# weight Parameter -> the SparseLinear24 that owns it (weakly both ways), for notify_mask_change
_OWNERS: WeakIdKeyDictionary = WeakIdKeyDictionary()
_GEMM_DTYPES = (torch.float16, torch.bfloat16)
_TOKEN_PAD = 8  # torch's dense_min_rows/cols for fp16/bf16 CUTLASS semi-structured GEMMs


def eligibility_24(module: nn.Module, transposable: bool = True) -> str | None:
    """None if ``module`` can become a :class:`SparseLinear24`, else the reason (shape/dtype/type)."""
    if not isinstance(module, nn.Linear):
        return f"not an nn.Linear ({type(module).__name__})"
    w = module.weight
    if w.dtype not in ops24.DTYPES:
        return f"weight dtype {w.dtype} (2:4 kernels take float32, float16, bfloat16)"
    out_f, in_f = w.shape
    # torch's CUTLASS fp16/bf16 2:4 GEMM: sparse operand rows % 32, cols % 64 (W; transposable: W^T [in, out] too)
    ro = 64 if transposable else 32
    if out_f % ro or in_f % 64:
        return (f"shape [{out_f}, {in_f}]: the CUTLASS 2:4 GEMMs need out_features % {ro} == 0 and in_features % 64 "
                f"== 0{' (transposable: W^T too)' if transposable else ''}")
    if w.device.type not in ("cpu", "cuda"):
        return f"device {w.device}"
    return None


def _check_mask(mask: torch.Tensor, shape, transposable: bool) -> torch.Tensor:
    from ..masks import is_nm, is_transposable

    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or tuple(mask.shape) != tuple(shape):
        raise ValueError(f"mask: expected a torch.bool tensor of shape {tuple(shape)}, got "
                         f"{getattr(mask, 'dtype', type(mask).__name__)} {tuple(getattr(mask, 'shape', ()))}")
    if transposable:
        if not is_transposable(mask, 2, 4):
            raise ValueError("mask: expected a transposable 2:4 mask (every aligned 4x4 tile keeps 2 per row and "
                             "column) for a transposable SparseLinear24")
    elif not is_nm(mask, 2, 4):
        raise ValueError("mask: expected a 2:4 mask along dim 1 (2 kept of every 4)")
    return mask


class _Linear24(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, mod):
        x2 = x.reshape(-1, x.shape[-1])
        packed = mod._packed()
        fast = mod._gemm_dtype(x)
        if fast is not None:
            xv = x2.to(fast)
            y = _sparse_mm_t(packed[0].to(fast), packed[1], xv)  # x W^T
            w_eff = None
        else:
            w_eff = ops24.decompress_24(packed[0], packed[1])
            xv = x2.to(w_eff.dtype) if not torch.is_autocast_enabled(x.device.type) else x2
            y = xv @ w_eff.to(xv.dtype).t()
        if bias is not None:
            y = y + bias.to(y.dtype)
        ctx.mod, ctx.fast, ctx.has_bias = mod, fast, bias is not None
        ctx.x_shape, ctx.x_dtype, ctx.w_dtype = x.shape, x.dtype, weight.dtype
        ctx.save_for_backward(xv, w_eff)
        ctx.packed = packed
        return y.reshape(*x.shape[:-1], y.shape[-1])

    @staticmethod
    def backward(ctx, gy):
        xv, w_eff = ctx.saved_tensors
        mod, fast, packed = ctx.mod, ctx.fast, ctx.packed
        g2 = gy.reshape(-1, gy.shape[-1]).to(xv.dtype)
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            if fast is not None and mod.transposable:
                gx = _sparse_mm_t(packed[2].to(fast), packed[3], g2)  # dY W = dY (W^T)^T
            else:
                w = w_eff if w_eff is not None else ops24.decompress_24(packed[0], packed[1])
                gx = g2 @ w.to(g2.dtype)
            gx = gx.reshape(ctx.x_shape).to(ctx.x_dtype)
        if ctx.needs_input_grad[1]:
            gt = g2.t()
            if mod.grad_sparsity == "mvue":
                gw = _mvue_dw(gt, xv, fast, mod.generator)
            else:
                gw = gt @ xv
            gw = (gw * mod.mask).to(ctx.w_dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = g2.sum(0)
        return gx, gw, gb, None


def _pad_rows(x: torch.Tensor, mult: int) -> torch.Tensor:
    pad = (-x.shape[0]) % mult
    return F.pad(x, (0, 0, 0, pad)) if pad else x


def _sparse_mm_t(values: torch.Tensor, meta: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
    """``x2 [T, K] @ S^T -> [T, N]`` for a CUTLASS-compressed ``S [N, K]`` (values [N, K/2], meta), on CUDA:
    ``S @ x2^T`` by torch's 2:4 GEMM, tokens zero-padded to a multiple of 8 and cropped."""
    t = x2.shape[0]
    xp = _pad_rows(x2, _TOKEN_PAD)
    out = torch._sparse_semi_structured_mm(values, meta, xp.t())  # [N, T_pad]
    return out[:, :t].t()


def _mvue_dw(gt: torch.Tensor, xv: torch.Tensor, fast, generator) -> torch.Tensor:
    """``mvue_24(dY^T) @ X``: ``gt = dY^T [out, T]`` made 2:4 along tokens (zero-padded to a multiple of 4, or of 64
    for the GEMM; a zero column stays zero), then the sparse GEMM on CUDA or a dense matmul."""
    mult = 64 if fast is not None else 4
    t = gt.shape[1]
    pad = (-t) % mult
    gtp = F.pad(gt, (0, pad)) if pad else gt
    xp = F.pad(xv, (0, 0, 0, pad)) if pad else xv
    gs = ops24._mvue_op(gtp.contiguous(), ops24._seed_offset(generator), 4)
    if fast is not None:
        v, m = ops24._compress_op(gs.to(fast))
        return torch._sparse_semi_structured_mm(v, m, xp.to(fast))
    return gs @ xp


class SparseLinear24(nn.Module):
    """A Linear with a 2:4 weight mask running on compressed 2:4 weights (module docstring).

    Attributes:
        weight: ``nn.Parameter [out, in]`` (the dense-shaped weight, kept inside ``mask``); bias: ``[out]`` or None.
        mask: ``torch.bool [out, in]`` buffer (transposable 2:4 when ``transposable``).
        transposable: whether the backward's input gradient runs on compressed ``W^T``.
        grad_sparsity: None (dense ``dW``) or ``"mvue"``.
        generator: ``torch.Generator`` for the MVUE draws (None: torch's default CPU generator).
        mask_updates / compressions: how often the mask was set / the compressed form rebuilt (diagnostics).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, transposable: bool = True,
                 grad_sparsity: str | None = None, device=None, dtype=None):
        super().__init__()
        if grad_sparsity not in GRAD_SPARSITY:
            raise ValueError(f"grad_sparsity: expected None or 'mvue', got {grad_sparsity!r}")
        if not isinstance(transposable, bool):
            raise ValueError(f"transposable: expected a bool, got {transposable!r}")
        self.in_features, self.out_features = in_features, out_features
        self.transposable, self.grad_sparsity = transposable, grad_sparsity
        self.generator: torch.Generator | None = None
        lin = nn.Linear(in_features, out_features, bias=bias, device=device, dtype=dtype)
        why = eligibility_24(lin, transposable)
        if why is not None:
            raise ValueError(f"SparseLinear24: {why}")
        self.weight, self.bias = lin.weight, lin.bias
        self.register_buffer("mask", torch.ones_like(lin.weight, dtype=torch.bool))
        self.mask_updates = self.compressions = 0
        self._cache_key = None
        self._cache: tuple | None = None
        self.set_mask(None)

    @classmethod
    @torch.no_grad()
    def from_dense(cls, linear: nn.Linear, transposable: bool = True, grad_sparsity: str | None = None,
                   mask: torch.Tensor | None = None) -> "SparseLinear24":
        """A :class:`SparseLinear24` sharing ``linear``'s weight and bias Parameters (the weight is masked in place).

        ``mask``: a bool ``[out, in]`` 2:4 mask (transposable when ``transposable``) to use; default: the one
        :func:`sparse.ops.compress_24` keeps (exact transposable 2:4, or the top 2 of 4 along rows).
        Raises ``ValueError`` for modules :func:`eligibility_24` refuses, a bad ``mask`` or ``grad_sparsity``.
        """
        why = eligibility_24(linear, transposable if isinstance(transposable, bool) else True)
        if why is not None:
            raise ValueError(f"linear: {why}")
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        if grad_sparsity not in GRAD_SPARSITY:
            raise ValueError(f"grad_sparsity: expected None or 'mvue', got {grad_sparsity!r}")
        if not isinstance(transposable, bool):
            raise ValueError(f"transposable: expected a bool, got {transposable!r}")
        new.in_features, new.out_features = linear.in_features, linear.out_features
        new.transposable, new.grad_sparsity, new.generator = transposable, grad_sparsity, None
        new.weight, new.bias = linear.weight, linear.bias
        new.register_buffer("mask", torch.ones_like(linear.weight, dtype=torch.bool))
        new.mask_updates = new.compressions = 0
        new._cache_key, new._cache = None, None
        new.set_mask(mask)
        new.train(linear.training)
        return new

    # ------------------------------------------------------------------------------------------- mask
    @torch.no_grad()
    def set_mask(self, mask: torch.Tensor | None = None) -> None:
        """Use ``mask`` (bool ``[out, in]``, checked) or, with None, compute it from the current weight; the weight
        is masked in place and the compressed form is rebuilt at the next forward."""
        if mask is None:
            mask = ops24.mask_24(self.weight.detach(), self.transposable)
        else:
            mask = _check_mask(mask.to(self.weight.device), self.weight.shape, self.transposable)
        self.mask.copy_(mask)
        self.weight.mul_(self.mask)
        self.mask_updates += 1
        self._cache_key, self._cache = None, None
        _OWNERS[self.weight] = self  # SparseOptimizer's targets notify the owner when they change the mask

    def _packed(self) -> tuple:
        w = self.weight
        key = (w._version, w.data_ptr(), w.dtype, w.device, self.mask._version)
        if self._cache is None or self._cache_key != key:
            with torch.no_grad():
                wm = w.detach() * self.mask
                # shapes were checked at construction; the public op's finiteness check would sync every step
                packed = tuple(ops24._compress_op(wm))
                if self.transposable:
                    packed += tuple(ops24._compress_op(wm.t().contiguous()))
            self._cache, self._cache_key = packed, key
            self.compressions += 1
        return self._cache

    def _gemm_dtype(self, x: torch.Tensor) -> torch.dtype | None:
        if not (x.is_cuda and self.weight.is_cuda):
            return None
        dt = torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else x.dtype
        if dt not in _GEMM_DTYPES or (not torch.is_autocast_enabled("cuda") and self.weight.dtype != dt):
            return None
        return dt

    def dense_weight(self) -> torch.Tensor:
        """``decompress_24(compress_24(W * mask))``: the weight the forward uses, dense-shaped."""
        v, m = self._packed()[:2]
        return ops24.decompress_24(v, m)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"x: expected last dimension {self.in_features}, got shape {tuple(x.shape)}")
        return _Linear24.apply(x, self.weight, self.bias, self)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"transposable={self.transposable}, grad_sparsity={self.grad_sparsity}")


@dataclass
class Sparsify24Report:
    """What :func:`sparsify_24` did: ``swapped`` module names, ``skipped`` name -> reason."""

    swapped: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        lines = [f"2:4: {len(self.swapped)} Linear(s) swapped, {len(self.skipped)} left dense"]
        lines += [f"  skipped {k}: {v}" for k, v in self.skipped.items()]
        return "\n".join(lines)


@torch.no_grad()
def sparsify_24(model: nn.Module, filter_fn: Callable[[str, nn.Module], bool] | None = None, *,
                transposable: bool = True, grad_sparsity: str | None = None) -> Sparsify24Report:
    """Replace, in place, every ``nn.Linear`` of ``model`` that ``filter_fn(fqn, module)`` accepts (default: all)
    and :func:`eligibility_24` allows by a :class:`SparseLinear24` (same Parameters); the others are listed with
    their reason in the returned :class:`Sparsify24Report`."""
    if filter_fn is not None and not callable(filter_fn):
        raise ValueError(f"filter_fn: expected a callable (fqn, module) -> bool, got {type(filter_fn).__name__}")
    if grad_sparsity not in GRAD_SPARSITY:
        raise ValueError(f"grad_sparsity: expected None or 'mvue', got {grad_sparsity!r}")
    report = Sparsify24Report()
    targets = [(fqn, m) for fqn, m in model.named_modules() if type(m) is nn.Linear]
    for fqn, m in targets:
        if filter_fn is not None and not filter_fn(fqn, m):
            report.skipped[fqn] = "excluded by filter_fn"
            continue
        why = eligibility_24(m, transposable)
        if why is not None:
            report.skipped[fqn] = why
            continue
        parent_fqn, _, name = fqn.rpartition(".")
        parent = model.get_submodule(parent_fqn) if parent_fqn else model
        setattr(parent, name, SparseLinear24.from_dense(m, transposable=transposable, grad_sparsity=grad_sparsity))
        report.swapped.append(fqn)
    log.info("%s", report)
    return report


def notify_mask_change(param: torch.Tensor, mask: torch.Tensor | None) -> bool:
    """Called by ``SparseOptimizer``'s targets after they set ``param``'s mask: if ``param`` is the weight of a
    :class:`SparseLinear24`, that module takes the mask (checked: ``ValueError`` if it is not 2:4 / transposable)
    and recompresses at its next forward. Returns whether a module was notified."""
    owner = _OWNERS.get(param)
    if owner is None or mask is None:
        return False
    if not torch.equal(mask.to(owner.mask.device), owner.mask):
        owner.set_mask(mask)
    return True
