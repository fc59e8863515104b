"""Fast CPU dropout: a counter-based generator fused with the scaling, as a dispatched autograd op.

:func:`dropout` has the distribution and the semantics of :func:`torch.nn.functional.dropout` (each element
kept with probability ``1 - p`` and scaled by ``1 / (1 - p)``, the others multiplied by 0; ``training=False``,
``p == 0`` or an empty ``x`` return ``x`` itself; ``p == 1`` gives ``x * 0``), drawn by a different generator:

* backend ``csrc-cpu`` (``sparse._C``, ``csrc/cpu/dropout_cpu.cpp``): CPU tensors of float32, float64,
  bfloat16 or float16. Element ``i`` (row-major over the logical shape) is kept iff a 32-bit Philox4x32-10
  word, a pure function of ``(seed, offset, i)``, is below ``round((1 - p) * 2**32)``; the vector path
  (AVX-512F, chosen at run time) and the portable scalar one give identical bits, and so does any thread
  count. ``(seed, offset)`` are two 63-bit integers drawn from ``generator`` (or torch's default CPU
  generator), so ``torch.manual_seed`` makes runs reproducible and every call draws fresh bits. The keep bits
  are kept for the backward as a bit mask (1 bit per element, where torch keeps a full-size mask); the
  backward is ``grad * keep / (1 - p)`` from those bits. Kept values are ``x * s`` with ``s = 1 / (1 - p)``
  rounded to fp32 (fp64 for fp64 inputs) and the product rounded once to ``x``'s dtype (torch rounds ``s``
  to the dtype first, e.g. bf16 ``s = 1.109375`` for ``p = 0.1``). The output is contiguous.
* backend ``torch``: :func:`torch.nn.functional.dropout` (with a ``generator``: torch's own formula,
  ``x * bernoulli(1 - p) / (1 - p)``): other devices (torch's CUDA dropout is fused already), other dtypes,
  or no extension. :func:`sparse.ops.last_backend` ``("dropout")`` says which one ran.

Measured (``sparse bench dropout``, quiet 2-core Intel Xeon with AVX-512 and AVX512-BF16, no AMX; p = 0.1;
medians of 15 interleaved rounds): forward 8.3-11.1x and forward+backward 5.1-7.6x faster than ``F.dropout`` at
1 thread, 13-15.5x and 7.5-10.1x at 2 threads, on 16x128x384, 16x12x128x128, 16x128x1536 and 16x128x768 in bf16
and fp32. A whole MiniLM training step with :func:`sparse.nn.use_fast_dropout` vs PyTorch's dropout (``sparse bench
train --dropout-paths fast,torch,none``, fp32 as ``bf16: auto`` picks there, 2 threads, paired): 1.43x dense, 1.73x
block90 at 16 x 128 tokens (no dropout at all: 1.53x, 1.99x); 1.18-1.22x at the tweets recipes' median batch of
16 x 55 tokens, where no dropout at all gives 1.26x (the fp32 matmuls are most of that step).
"""
from __future__ import annotations

import numbers

import torch
import torch.nn.functional as F

from .._backends import ext
from .dispatch import Op

__all__ = ["dropout", "dropout_op", "native_isa", "native_usable", "unpack_mask"]

dropout_op = Op("dropout")

_NATIVE_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def _native_ext():
    mod = ext()
    if mod is None:
        return None, "sparse._C is not built"
    if not hasattr(mod, "dropout_forward"):
        return None, "sparse._C predates the dropout kernel; rebuild it"
    return mod, None


def native_isa() -> str | None:
    """Path of the native kernel on this CPU: ``"avx512"`` or ``"scalar"`` (``SPARSE_DROPOUT_ISA=scalar`` forces
    the portable one); ``None`` when ``sparse._C`` has no dropout kernel."""
    mod, _ = _native_ext()
    return None if mod is None else mod.dropout_isa()


def native_usable(x, p, generator=None) -> str | None:
    """None if the ``csrc-cpu`` kernel can run ``dropout(x, p, generator=generator)``, else the reason."""
    mod, why = _native_ext()
    if mod is None:
        return why
    if x.device.type != "cpu":
        return f"{x.device.type} tensor (the kernel is CPU-only; torch's {x.device.type} dropout runs)"
    if x.dtype not in _NATIVE_DTYPES:
        return f"dtype {x.dtype} (the kernel runs float32, float64, bfloat16, float16)"
    if x.layout != torch.strided or x.is_nested:
        return f"layout {x.layout} (the kernel runs dense strided tensors)"
    if generator is not None and generator.device.type != "cpu":
        return f"generator on {generator.device}"
    return None


def _seed_offset(generator: torch.Generator | None) -> torch.Tensor:
    # Two draws from the caller's generator: torch.manual_seed reproduces them, and the generator moves on,
    # so consecutive calls use independent Philox streams.
    return torch.randint(0, 2**63 - 1, (2,), dtype=torch.int64, generator=generator)


def _native(x: torch.Tensor, p: float, generator: torch.Generator | None) -> torch.Tensor:
    out, _ = torch.ops.sparse.dropout(x, p, _seed_offset(generator))
    return out


def _torch(x: torch.Tensor, p: float, generator: torch.Generator | None) -> torch.Tensor:
    if generator is None:
        return F.dropout(x, p, training=True)
    return x * torch.empty_like(x).bernoulli_(1.0 - p, generator=generator).div_(1.0 - p)


dropout_op.register("csrc-cpu", native_usable)(_native)
dropout_op.register("torch")(_torch)


# ---------------------------------------------------------------------------- torch.library ops
@torch.library.custom_op("sparse::dropout", mutates_args=())
def _dropout_fwd(x: torch.Tensor, p: float, seed_offset: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mod, why = _native_ext()
    if mod is None:
        raise RuntimeError(f"sparse::dropout: {why}")
    return mod.dropout_forward(x, p, seed_offset)


@_dropout_fwd.register_fake
def _(x, p, seed_offset):
    return x.new_empty(x.shape), x.new_empty(8 * ((x.numel() + 63) // 64), dtype=torch.uint8)


@torch.library.custom_op("sparse::dropout_backward", mutates_args=())
def _dropout_bwd(grad: torch.Tensor, mask: torch.Tensor, p: float) -> torch.Tensor:
    mod, why = _native_ext()
    if mod is None:
        raise RuntimeError(f"sparse::dropout_backward: {why}")
    return mod.dropout_backward(grad, mask, p)


@_dropout_bwd.register_fake
def _(grad, mask, p):
    return grad.new_empty(grad.shape)


def _fwd_setup(ctx, inputs, output):
    ctx.p = inputs[1]
    ctx.save_for_backward(output[1])
    ctx.set_materialize_grads(False)  # no zero-filled gradient for the (integer) mask output


def _fwd_backward(ctx, grad, _grad_mask):
    if grad is None:
        return None, None, None
    (mask,) = ctx.saved_tensors
    return torch.ops.sparse.dropout_backward(grad, mask, ctx.p), None, None


def _bwd_setup(ctx, inputs, output):
    ctx.p = inputs[2]
    ctx.save_for_backward(inputs[1])


def _bwd_backward(ctx, grad):
    # The backward is linear in grad with the same mask: its own gradient is the same op (double backward).
    (mask,) = ctx.saved_tensors
    return torch.ops.sparse.dropout_backward(grad, mask, ctx.p), None, None


_dropout_fwd.register_autograd(_fwd_backward, setup_context=_fwd_setup)
_dropout_bwd.register_autograd(_bwd_backward, setup_context=_bwd_setup)


# ---------------------------------------------------------------------------- public function
def _check_p(p) -> float:
    if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0.0 <= float(p) <= 1.0:
        raise ValueError(f"p: expected a dropout probability 0 <= p <= 1, got {p!r}")
    return float(p)


def dropout(x: torch.Tensor, p: float = 0.5, training: bool = True,
            generator: torch.Generator | None = None) -> torch.Tensor:
    """Dropout of ``x``: keep each element with probability ``1 - p`` and scale it by ``1 / (1 - p)``.

    A drop-in for ``torch.nn.functional.dropout(x, p, training)`` (same distribution and special cases) that
    runs a Philox counter-based kernel on CPU (see the module docstring), differentiable. ``generator``: a
    ``torch.Generator`` on ``x``'s device to draw the seed from (default: torch's default generator). Raises
    ``ValueError`` for p outside [0, 1], a non-tensor ``x`` or a generator on another device.
    """
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"x: expected a torch.Tensor, got {type(x).__name__}")
    p = _check_p(p)
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise ValueError(f"generator: expected None or a torch.Generator, got {type(generator).__name__}")
        if generator.device.type != x.device.type:
            raise ValueError(f"generator: on {generator.device}, but x is on {x.device}")
    if not training or p == 0.0 or x.numel() == 0:
        return x
    if p == 1.0:
        return x * x.new_zeros(())
    if torch.compiler.is_compiling():  # the dispatcher's bookkeeping (a log call, a dict) would break the graph
        return dropout_op.choose(x, p, generator).fn(x, p, generator)
    return dropout_op(x, p, generator)


def unpack_mask(mask: torch.Tensor, numel: int) -> torch.Tensor:
    """The kernel's bit mask (uint8, bit j of byte k = element 8k + j) as a flat bool tensor of ``numel``."""
    bits = (mask.view(-1, 1) >> torch.arange(8, dtype=torch.uint8, device=mask.device)) & 1
    return bits.view(-1)[:numel].bool()
