"""Fast dropout for models: :class:`Dropout` (drop-in for ``nn.Dropout``) and :func:`use_fast_dropout`.

The switch, for any model (HF or not)::

    sparse.nn.use_fast_dropout(model)                 # on: fast dropout everywhere it can go
    sparse.nn.use_fast_dropout(model, enabled=False)  # off: plain PyTorch dropout again (bit-exact runs)

What it changes:

* every ``nn.Dropout`` submodule (exact type; ``Dropout1d/2d/3d`` and ``AlphaDropout`` are left alone) is
  replaced by :class:`Dropout`, which runs :func:`sparse.ops.dropout` (Philox kernel on CPU, torch's dropout
  elsewhere);
* attention-probability dropout of a transformers model whose attention goes through transformers'
  ``AttentionInterface`` (``config._attn_implementation`` ``"eager"`` or ``"sdpa"``): a registered attention
  function (``"sparse_fast_dropout"`` over eager, ``"sparse_fast_dropout+sdpa"`` over sdpa) is selected with
  ``model.set_attn_implementation``; in training with dropout it computes eager attention (scores, additive
  mask, softmax, :func:`sparse.ops.dropout`, weighted sum); in eval or with ``p == 0`` it calls the previous
  implementation unchanged (same mask format too), so eval outputs are identical. Models with other
  implementations (flash, flex) keep their attention; a message says so. Nothing is monkey-patched.

With the switch off a run is bit-exact with plain PyTorch (same dropout draws); with it on the draws come from
the Philox kernel (same distribution, different bits), seeded from torch's generator, so still reproducible.
"""
from __future__ import annotations

import logging
import sys

import torch
from torch import nn

from ..ops.dropout import _check_p
from ..ops.dropout import dropout as fast_dropout

__all__ = ["Dropout", "FAST_ATTENTION", "use_fast_dropout"]

log = logging.getLogger(__name__)

# Registered attention implementation name -> the implementation it runs when dropout is off.
FAST_ATTENTION = {"sparse_fast_dropout": "eager", "sparse_fast_dropout+sdpa": "sdpa"}
_BASE_TO_FAST = {base: name for name, base in FAST_ATTENTION.items()}


class Dropout(nn.Dropout):
    """``nn.Dropout(p, inplace)`` on :func:`sparse.ops.dropout`: same distribution, the fast CPU kernel.

    A subclass of ``nn.Dropout`` so that code looking for dropout modules (``isinstance``, ``.p``) still finds
    it. ``inplace=True`` writes the result back into the input (the kernel itself is out of place).
    """

    def __init__(self, p: float = 0.5, inplace: bool = False):
        super().__init__(_check_p(p), inplace)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = fast_dropout(x, self.p, self.training)
        if self.inplace and out is not x:
            return x.copy_(out)
        return out

    @classmethod
    def from_torch(cls, module: nn.Dropout) -> "Dropout":
        new = cls(module.p, module.inplace)
        new.train(module.training)
        return new

    def to_torch(self) -> nn.Dropout:
        old = nn.Dropout(self.p, self.inplace)
        old.train(self.training)
        return old


# ---------------------------------------------------------------------------- attention
_UNSUPPORTED_KWARGS = ("softcap", "s_aux", "sinks", "sliding_window", "position_bias")
_warned: set[str] = set()


def _model_eager(module):
    """The eager attention of the model that ``module`` belongs to (its modeling file's
    ``eager_attention_forward``), else None."""
    fn = getattr(sys.modules.get(type(module).__module__), "eager_attention_forward", None)
    return fn if callable(fn) else None


def _base_attention(base: str, module):
    if base == "eager":
        return _model_eager(module) or _eager_attention
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    return ALL_ATTENTION_FUNCTIONS[base]


def _eager_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, causal=False,
                     generator=None):
    """Eager attention (the BERT-family formula) with :func:`sparse.ops.dropout` on the probabilities.

    ``causal``: no mask was materialised because the base (sdpa) would have used ``is_causal``; add it here.
    """
    if scaling is None:
        scaling = query.size(-1) ** -0.5
    if key.shape[1] != query.shape[1]:  # grouped-query attention: each kv head serves several query heads
        groups = query.shape[1] // key.shape[1]
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
    # Scaling the [.., L, d] query rather than the [.., L, L] scores, and adding the mask in place, spares two
    # passes over the scores forward and one backward (at 128 tokens, ~2.7 ms of a MiniLM layer's ~22 ms).
    weights = torch.matmul(query * scaling, key.transpose(2, 3))
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:  # an sdpa-format mask: True = attend
            attention_mask = torch.where(attention_mask, torch.zeros((), dtype=weights.dtype, device=weights.device),
                                         torch.finfo(weights.dtype).min)
        attention_mask = attention_mask[:, :, :, : key.shape[-2]]
        if torch.result_type(weights, attention_mask) == weights.dtype:
            weights = weights.add_(attention_mask)
        else:  # e.g. bf16 scores under autocast with an fp32 mask: promote, as the eager formula does
            weights = weights + attention_mask
    elif causal:  # sdpa's is_causal: top-left aligned
        q_len, kv_len = weights.shape[-2:]
        keep = torch.ones(q_len, kv_len, dtype=torch.bool, device=weights.device).tril()
        weights = weights.masked_fill(~keep, torch.finfo(weights.dtype).min)
    weights = nn.functional.softmax(weights, dim=-1)
    weights = fast_dropout(weights, dropout, module.training, generator)
    out = torch.matmul(weights, value).transpose(1, 2).contiguous()
    return out, weights


def _make_attention(base: str):
    def attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        if not dropout or not module.training:
            return _base_attention(base, module)(module, query, key, value, attention_mask, scaling=scaling,
                                                 dropout=dropout, **kwargs)
        odd = [k for k in _UNSUPPORTED_KWARGS if kwargs.get(k) is not None]
        if odd:
            why = f"{type(module).__name__} passes {', '.join(odd)}"
            if why not in _warned:
                _warned.add(why)
                log.warning("sparse_fast_dropout: %s; this attention runs %s with torch's dropout", why, base)
            return _base_attention(base, module)(module, query, key, value, attention_mask, scaling=scaling,
                                                 dropout=dropout, **kwargs)
        causal = False
        if base == "sdpa":  # sdpa_attention_forward's rule for when it relies on is_causal instead of a mask
            is_causal = kwargs.get("is_causal")
            is_causal = getattr(module, "is_causal", True) if is_causal is None else is_causal
            causal = bool(is_causal) and attention_mask is None and query.shape[2] > 1
        return _eager_attention(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                causal=causal)

    attention.__name__ = f"sparse_fast_dropout_attention_over_{base}"
    attention.__doc__ = (f"Attention for transformers' AttentionInterface: eager attention with sparse.ops.dropout "
                         f"in training with dropout, else the {base!r} implementation unchanged.")
    return attention


def register_attention() -> None:
    """Register the fast-dropout attention functions (and their mask formats) with transformers; idempotent.

    Raises ImportError when transformers is not installed.
    """
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    for name, base in FAST_ATTENTION.items():
        if name not in AttentionInterface._global_mapping:
            AttentionInterface.register(name, _make_attention(base))
        if name not in AttentionMaskInterface._global_mapping:
            # The base's mask format: eval then gets exactly the mask it got before the switch.
            AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[base])


def _set_attention(model: nn.Module, name: str) -> bool:
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation(name)
    else:
        model.config._attn_implementation = name
    if model.config._attn_implementation != name:
        log.warning("use_fast_dropout: %s did not accept attn_implementation=%r (it keeps %r)", type(model).__name__,
                    name, model.config._attn_implementation)
        return False
    return True


def _swap_attention(model: nn.Module, enabled: bool) -> str | None:
    config = getattr(model, "config", None)
    current = getattr(config, "_attn_implementation", None) if config is not None else None
    if current is None:
        return None
    if not enabled:
        if current in FAST_ATTENTION:
            _set_attention(model, FAST_ATTENTION[current])
        return None
    if current in FAST_ATTENTION:
        return current
    if current not in _BASE_TO_FAST:
        log.info("use_fast_dropout: attention implementation %r kept (fast attention dropout goes over eager or "
                 "sdpa only)", current)
        return None
    try:
        register_attention()
    except ImportError:
        return None
    name = _BASE_TO_FAST[current]
    return name if _set_attention(model, name) else None


def use_fast_dropout(model: nn.Module, enabled: bool = True) -> nn.Module:
    """Switch ``model`` to the fast dropout (``enabled=True``) or back to PyTorch's (``enabled=False``), in place.

    Swaps every ``nn.Dropout`` submodule for :class:`Dropout` (or back) and, for a transformers model with
    ``eager`` or ``sdpa`` attention, selects the registered ``sparse_fast_dropout`` attention function (or the
    previous implementation again); see the module docstring. Idempotent; returns ``model``.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    swapped = 0
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if enabled and type(child) is nn.Dropout:
                setattr(parent, child_name, Dropout.from_torch(child))
                swapped += 1
            elif not enabled and type(child) is Dropout:
                setattr(parent, child_name, child.to_torch())
                swapped += 1
    attention = _swap_attention(model, enabled)
    log.info("use_fast_dropout(enabled=%s): %d dropout modules swapped%s", enabled, swapped,
             f", attention {attention!r}" if attention else "")
    return model
