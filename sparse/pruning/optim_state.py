"""``SparseOptimizer``'s per-weight state: one target object per pruned weight, and the inner
optimizer's state of pruned entries kept cheap and exact.

:class:`MagnitudeTarget` (hard masks: gradients and weights multiplied by the mask) and
:class:`SRSTETarget` (a dense shadow weight stepped with the SR-STE gradient) hold a weight's mask
and everything derived from it, written in one place (``set_mask``); ``SparseOptimizer`` calls
``pre_step`` / ``post_step`` / ``apply_mask`` / ``tidy_state`` on each and knows nothing of the kind.
A target whose layer moved to a block-sparse kernel once its mask was final becomes a
:class:`KernelTarget` (nothing left to mask; :mod:`sparse.pruning.kernel_swap` does the module surgery).

Tidying the inner optimizer's state (magnitude targets only): masked gradients are exactly zero, so for a pruned weight Adam's moments only decay:
``exp_avg`` shrinks by beta1 each step and, within a few hundred steps, reaches float32 denormals,
which make every elementwise op on the tensor 3-7x slower on x86 CPUs (measured here on 10M floats:
``mul`` 13.5 ms dense vs 56 ms half-denormal). ``exp_avg_sq`` of a weight pruned before its first
step is exactly zero, and ``torch.sqrt`` on CPU runs 2.3x slower on half-zero input (15 vs 35 ms).

So when a mask is set, the pruned entries of the known state tensors get values that keep the
update exactly zero (``exp_avg`` = 0, so the numerator is zero whatever the denominator) and stay
normal floats for a long time (``exp_avg_sq`` = 1, which takes ~87,000 steps of beta2 = 0.999 decay
to reach a denormal; :data:`RETIDY_EVERY` re-applies it long before). Entries a refreshed mask revives
start from fresh (zero) state, as a newly added parameter would.

The registry is explicit: optimizers not listed are left alone (their state is still correct, only
possibly slower). Nothing here changes which weights are pruned or the values of kept weights.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..recipe import PruningEntry
from .patterns import SparsityPattern

#: optimizer class name -> {state key: value for pruned entries}
STATE_FILL: dict[str, dict[str, float]] = {
    "Adam": {"exp_avg": 0.0, "exp_avg_sq": 1.0, "max_exp_avg_sq": 1.0},
    "AdamW": {"exp_avg": 0.0, "exp_avg_sq": 1.0, "max_exp_avg_sq": 1.0},
    "SGD": {"momentum_buffer": 0.0},
}

#: re-apply the fill this often (in optimizer steps) so decayed fills never reach denormals
RETIDY_EVERY = 10_000


def base_optimizer(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """The optimizer that owns the state: wrappers that keep the real one in ``.optimizer``
    (accelerate's ``AcceleratedOptimizer``, which the Hugging Face Trainer uses) are looked through."""
    seen = 0
    while (type(optimizer).__module__.split(".")[0] != "torch" and seen < 8
           and isinstance(getattr(optimizer, "optimizer", None), torch.optim.Optimizer)):
        optimizer, seen = optimizer.optimizer, seen + 1
    return optimizer


def state_fill_for(optimizer: torch.optim.Optimizer) -> dict[str, float] | None:
    """The fill rules for ``optimizer``'s class (exact class match, not subclasses: a subclass may
    give the same state key another meaning), or None. Pass :func:`base_optimizer`'s result."""
    return STATE_FILL.get(type(optimizer).__name__) if type(optimizer).__module__.startswith("torch.optim") else None


@torch.no_grad()
def tidy_state(state: dict, fill: dict[str, float], mask: torch.Tensor,
               revived: torch.Tensor | None = None) -> bool:
    """Set the pruned entries (``~mask``) of ``state``'s tensors named in ``fill``; zero the
    ``revived`` entries (kept now, pruned before). Returns False when the state does not exist yet
    (before the optimizer's first step), so the caller can try again later.

    Args:
        state: ``optimizer.state[param]``.
        fill: state key -> value for pruned entries.
        mask: torch.bool, the param's shape; True = kept.
        revived: torch.bool of the same shape, or None.
    """
    if not state:
        return False
    for key, value in fill.items():
        buf = state.get(key)
        if not isinstance(buf, torch.Tensor) or buf.shape != mask.shape:
            continue
        buf.masked_fill_(~mask, value)
        if revived is not None:
            buf.masked_fill_(revived, 0.0)
    return True


def check_inner_state_dict(optimizer: torch.optim.Optimizer, state_opt: torch.optim.Optimizer, osd, names: dict,
                           where: str, shapes: dict | None = None) -> None:
    """Check ``osd`` against ``optimizer`` before ``optimizer.load_state_dict(osd)`` changes anything:
    its structure, the number and sizes of its parameter groups, and, for the optimizers of
    :data:`STATE_FILL` (whose per-weight state has the weight's shape), the shape of that state.
    torch checks only the groups, and a moment of the wrong shape would fail at the next step.

    Args:
        optimizer: the wrapped optimizer (``load_state_dict`` goes to it); ``state_opt``: the one that
            owns the state (:func:`base_optimizer`), whose class picks the shape rules.
        osd: the candidate ``optimizer.state_dict()``; names: ``id(param) -> fqn`` for messages.
        where: how ``osd`` is named in messages.
        shapes: ``id(param) -> shape`` the state will have instead of the param's own (a weight that
            moves to the block-sparse kernel when the state is loaded: its kept blocks' layout).

    Raises:
        ValueError: naming ``where`` and what is wrong.
    """
    from collections.abc import Mapping

    if not (isinstance(osd, Mapping) and isinstance(osd.get("param_groups"), list) and "state" in osd):
        raise ValueError(f"{where}: expected the wrapped optimizer's state_dict() (a dict with 'state' and "
                         f"'param_groups'), got {type(osd).__name__}")
    state, saved = osd["state"], osd["param_groups"]
    if not isinstance(state, Mapping):
        raise ValueError(f"{where}['state']: expected a dict, got {type(state).__name__}")
    groups = optimizer.param_groups
    if len(saved) != len(groups):
        raise ValueError(f"{where}['param_groups']: expected {len(groups)} parameter groups, got {len(saved)}")
    id_map = {}
    for i, (g, sg) in enumerate(zip(groups, saved)):
        params = sg.get("params") if isinstance(sg, Mapping) else None
        if not isinstance(params, list):
            raise ValueError(f"{where}['param_groups'][{i}]: expected a dict with a 'params' list, got "
                             f"{type(sg).__name__}")
        if len(params) != len(g["params"]):
            raise ValueError(f"{where}['param_groups'][{i}]: expected {len(g['params'])} parameters, got {len(params)}")
        for key, p in zip(params, g["params"]):
            try:
                id_map[key] = p
            except TypeError:
                raise ValueError(f"{where}['param_groups'][{i}]['params']: expected integer ids, got "
                                 f"{type(key).__name__}") from None
    fill = state_fill_for(state_opt)
    for key, st in state.items():
        p = id_map.get(key) if isinstance(key, int) else None
        if p is None:
            continue  # state of no parameter: torch keeps it as is
        if not isinstance(st, Mapping):
            raise ValueError(f"{where}['state'][{key}]: expected a dict, got {type(st).__name__}")
        for name in fill or ():
            buf = st.get(name)
            if buf is None:
                continue
            want = tuple((shapes or {}).get(id(p), p.shape))
            if not isinstance(buf, torch.Tensor) or tuple(buf.shape) != want:
                got = tuple(buf.shape) if isinstance(buf, torch.Tensor) else type(buf).__name__
                raise ValueError(f"{where}['state']: {name} of {names.get(id(p), f'parameter {key}')}: expected "
                                 f"shape {want}, got {got}")


def notify_kernel_module(param: torch.Tensor, mask: torch.Tensor | None) -> None:
    """Tell a module that runs ``param`` on a kernel with a mask of its own (``sparse.nn.SparseLinear24``) that
    its mask changed, so it recompresses (once per mask change, not every step); it refuses masks it cannot run
    (not 2:4, or not transposable) with a ``ValueError``."""
    if mask is None:
        return
    from ..nn.sparse24 import notify_mask_change  # lazy: torch-only recipes never import the nn modules

    notify_mask_change(param, mask)


class MagnitudeTarget:
    """One weight pruned with hard masks: gradients and weights are multiplied by the mask.

    Attributes:
        fqn: the parameter's fully qualified name.
        entry: the recipe entry that owns it; ``pattern`` its pattern object.
        mask: ``torch.bool`` of the param's shape and device (True = kept); None before pruning.
        fmask: the mask in the param's dtype: ``mul_`` by it is ~2x faster than by a bool mask.
        sparsity: the sparsity the current mask was built for.
        tidy: the inner optimizer's state for this mask is still to be tidied.
        revived: entries the latest mask keeps that the one before pruned (their state is zeroed).
    """
    dense = None  # no shadow weight: the param itself is the weight the optimizer steps
    kernel: str | None = None  # the kernel the layer runs on (KernelTarget); None: masked dense

    def __init__(self, fqn: str, entry: PruningEntry, param: nn.Parameter, pattern: SparsityPattern):
        self.fqn, self.entry, self.param, self.pattern = fqn, entry, param, pattern
        self.shape = tuple(param.shape)  # the dense weight's shape (the mask's)
        self.mask: torch.Tensor | None = None
        self.fmask: torch.Tensor | None = None
        self.sparsity: float | None = None
        self.tidy = False
        self.revived: torch.Tensor | None = None

    def mask_source(self) -> torch.Tensor:
        """The weight new masks are computed from."""
        return self.param.detach()

    def dense_weight(self) -> torch.Tensor:
        """The weight the forward sees, dense-shaped (reports)."""
        return self.param.detach()

    def set_mask(self, mask: torch.Tensor | None, sparsity: float | None, *, restored: bool = False) -> None:
        """Write ``mask`` (``torch.bool``, the param's shape and device; None: not pruned) and all that
        derives from it. ``restored``: the mask comes from a checkpoint together with the optimizer
        state, so nothing was revived since that state was written."""
        if restored or mask is None or self.mask is None:
            revived = None
        else:
            revived = mask & ~self.mask
            if self.revived is not None:  # two mask changes before the state existed
                revived |= self.revived & mask
        self.revived = revived if revived is not None and bool(revived.any()) else None
        self.mask, self.sparsity = mask, sparsity
        self.fmask = None if mask is None else mask.to(self.param.dtype)
        self.tidy = mask is not None
        notify_kernel_module(self.param, mask)

    def pre_step(self) -> None:
        g = self.param.grad
        if self.fmask is not None and g is not None:
            g.mul_(self.fmask)

    def post_step(self, retidy: bool) -> None:
        if retidy and self.mask is not None:
            self.tidy = True

    def apply_mask(self) -> None:
        """Put the weight the forward sees inside the mask."""
        if self.fmask is not None:
            self.param.mul_(self.fmask)

    def tidy_state(self, state: dict, fill: dict[str, float] | None) -> None:
        # masked gradients leave the pruned entries' state to decay: see sparse.pruning.optim_state
        if fill is not None and self.tidy and tidy_state(state, fill, self.mask, self.revived):
            self.tidy, self.revived = False, None

    def state_dict(self) -> dict:
        """``{"mask", "sparsity"}`` (and ``"dense"`` for SR-STE) of a pruned weight, else ``{}``."""
        if self.mask is None:
            return {}
        return {"mask": self.mask.clone(), "sparsity": self.sparsity}

    def load_state_dict(self, mask: torch.Tensor | None, sparsity: float | None,
                        dense: torch.Tensor | None = None) -> None:
        self.set_mask(None if mask is None else mask.to(self.param.device), sparsity, restored=True)
        if mask is not None:
            self.param.mul_(self.mask)


class SRSTETarget(MagnitudeTarget):
    """One weight trained with SR-STE (Zhou et al., 2021): the inner optimizer steps a dense shadow
    weight with the straight-through gradient plus ``lam * (~mask) * W``; the forward sees
    ``dense * mask``. Gradients are dense, so the inner optimizer's state is never tidied.

    Attributes (besides :class:`MagnitudeTarget`'s):
        dense: the dense shadow weight (param's dtype), created with the first mask.
        nfmask: ``~mask`` in the param's dtype (one fused decay op).
        masked: the storage of the masked weight the forward sees.
    """

    def __init__(self, fqn: str, entry: PruningEntry, param: nn.Parameter, pattern: SparsityPattern):
        super().__init__(fqn, entry, param, pattern)
        self.lam = entry.method.lam
        self.dense: torch.Tensor | None = None
        self.nfmask: torch.Tensor | None = None
        self.masked: torch.Tensor | None = None

    def mask_source(self) -> torch.Tensor:
        if self.dense is None:
            self.dense = self.param.detach().clone()
        return self.dense

    def set_mask(self, mask: torch.Tensor | None, sparsity: float | None, *, restored: bool = False) -> None:
        self.mask, self.sparsity = mask, sparsity
        self.fmask = None if mask is None else mask.to(self.param.dtype)
        self.nfmask = None if mask is None else (~mask).to(self.param.dtype)

    def pre_step(self) -> None:
        if self.mask is None:
            return
        # The inner optimizer steps the dense shadow weight: swap storages instead of copying
        # (two full passes over every target weight per step saved).
        self.masked = self.param.data
        self.param.data = self.dense
        g = self.param.grad
        if g is not None:
            g.addcmul_(self.dense, self.nfmask, value=self.lam)  # g += lam * (~mask) * W, fused

    def post_step(self, retidy: bool) -> None:
        if self.dense is not None:
            self.dense = self.param.detach()  # the dense weight the inner optimizer just updated

    def apply_mask(self) -> None:
        if self.dense is None:
            return
        # the forward sees dense * mask, written into its own buffer (the dense one is kept)
        if self.masked is None or self.masked.data_ptr() == self.dense.data_ptr():
            self.masked = torch.empty_like(self.dense)
        self.param.data = torch.mul(self.dense, self.fmask, out=self.masked)

    def tidy_state(self, state: dict, fill: dict[str, float] | None) -> None:
        pass  # dense gradients: the state of pruned entries is live, not decaying

    def state_dict(self) -> dict:
        out = super().state_dict()
        if self.dense is not None:
            out["dense"] = self.dense.clone()
        return out

    def load_state_dict(self, mask: torch.Tensor | None, sparsity: float | None,
                        dense: torch.Tensor | None = None) -> None:
        self.dense = None if dense is None else dense.to(device=self.param.device, dtype=self.param.dtype).clone()
        self.masked = None
        super().load_state_dict(mask, sparsity)


class KernelTarget(MagnitudeTarget):
    """A weight whose final mask moved into a block-sparse kernel (``kernel: block-sparse``): its layer is a
    ``sparse.nn.BlockSparseLinear`` (:mod:`sparse.pruning.kernel_swap`) that holds only the kept blocks, so
    there is nothing left to mask: gradients, weights and optimizer state of pruned blocks do not exist.

    ``param`` is the module's block data ``[nnz, B, B]`` (the inner optimizer steps it); ``mask`` stays
    the final dense-shaped mask (``SparseOptimizer.masks``, ``state_dict``) and :meth:`set_mask` refuses
    any other, the one place where "final" is enforced.

    Attributes (besides :class:`MagnitudeTarget`'s): ``module`` the ``BlockSparseLinear``; ``swapped_at``
    the optimizer step after which the swap happened.
    """

    def __init__(self, target: MagnitudeTarget, module: nn.Module, swapped_at: int):
        super().__init__(target.fqn, target.entry, module.weight_data, target.pattern)
        self.kernel = target.entry.kernel
        self.module, self.swapped_at = module, swapped_at
        self.shape = target.shape
        self.mask, self.sparsity = target.mask, target.sparsity
        self.tidy = False

    def mask_source(self) -> torch.Tensor:
        return self.dense_weight()

    def dense_weight(self) -> torch.Tensor:
        return self.module.dense_weight().detach()

    def set_mask(self, mask: torch.Tensor | None, sparsity: float | None, *, restored: bool = False) -> None:
        if mask is None or self.mask is None or not torch.equal(mask.to(self.mask.device), self.mask):
            raise ValueError(f"{self.fqn}: runs on the {self.kernel} kernel since step {self.swapped_at}; its "
                             f"final mask cannot change (load such a state into a fresh model and optimizer)")
        self.sparsity = sparsity

    def pre_step(self) -> None:
        pass  # the kernel computes gradients of the kept blocks only

    def post_step(self, retidy: bool) -> None:
        pass

    def apply_mask(self) -> None:
        pass  # pruned blocks are not stored

    def tidy_state(self, state: dict, fill: dict[str, float] | None) -> None:
        pass  # no pruned entries in the state either

    def load_state_dict(self, mask: torch.Tensor | None, sparsity: float | None,
                        dense: torch.Tensor | None = None) -> None:
        self.set_mask(mask, sparsity, restored=True)


#: recipe method kind -> per-weight target class (explicit registry)
TARGET_CLASSES: dict[str, type[MagnitudeTarget]] = {"magnitude": MagnitudeTarget, "srste": SRSTETarget}
