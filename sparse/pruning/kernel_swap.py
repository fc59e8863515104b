"""Kernel swap: a pruning entry with ``kernel: block-sparse`` trains on ``sparse.nn.BlockSparseLinear`` once
its block mask is final, and the saved-run forms of such models.

When the swap is due (:func:`swap_due`: after the entry's one-shot step, or at the end of its cubic
schedule; never with ``refresh_every``), :class:`sparse.SparseOptimizer` calls :func:`swap_linear` for each
of the entry's layers:

* the ``nn.Linear`` is replaced *in place* in the model (the attribute set on its parent module) by an
  :class:`sparse.nn.BlockSparseLinear` holding the kept blocks of the (already masked) weight; its bias
  Parameter is the Linear's own, unchanged;
* :func:`move_param` puts the new block-data Parameter where the old weight was in the inner optimizer's
  ``param_groups`` (same group, same position, so LR schedulers and ``state_dict`` ids line up) and
  carries its per-weight state: every state tensor of the weight's shape (Adam/AdamW ``exp_avg``,
  ``exp_avg_sq``, ``max_exp_avg_sq``, SGD ``momentum_buffer``, and the same for the other elementwise
  torch optimizers) is gathered to the kept blocks' ``[nnz, B, B]`` layout; scalars (``step``) are kept.

The swap happens after the optimizer step that makes the mask final, so no step is lost, and the kept
weights, their moments and the next update are exactly those of the masked dense layer (pruned entries
had zero update). One difference remains outside the optimizer: gradient-norm clipping over
``model.parameters()`` sees only the kept blocks' gradients after the swap, while the masked dense layer
still reports the gradients of its pruned entries (they are masked later, in ``SparseOptimizer.step``).

Models never call a backend: the swapped module is a ``sparse.nn`` module and goes through
``sparse.ops``. Saving: :func:`dense_state_dict` expands the blocks into ordinary dense-shaped weights
(zeros in pruned blocks) so a saved run is a plain Hugging Face folder; :func:`save_block_sparse` /
:func:`load_block_sparse` additionally write / read ``sparse_modules.safetensors`` and
``sparse_modules.json`` (no pickle) so the folder loads back as the sparse modules.
"""
from __future__ import annotations

import json
import logging
import os

import torch
import torch.nn as nn

from ..nn import BlockSparseLinear
from ..ops.layout import BLOCK_SIZES, BlockLayout

log = logging.getLogger(__name__)

__all__ = ["swap_due", "block_mask_of", "swap_linear", "move_param", "check_kernel_24", "swap_linear_24",
           "check_swappable_model", "check_swappable_optimizer", "block_sparse_modules", "dense_state_dict",
           "save_block_sparse", "load_block_sparse", "SPARSE_MODULES_JSON", "SPARSE_MODULES_FILE"]

SPARSE_MODULES_JSON = "sparse_modules.json"
SPARSE_MODULES_FILE = "sparse_modules.safetensors"
_FORMAT, _VERSION = "sparse.block_sparse_modules", 1
_MAX_JSON_BYTES = 1 << 20

# torch optimizers whose per-weight state is elementwise (or scalar): it can be gathered to the kept blocks
ELEMENTWISE_OPTIMIZERS = ("Adam", "AdamW", "SGD", "RMSprop", "Adagrad", "Adamax", "NAdam", "RAdam", "Adadelta",
                          "ASGD", "Rprop")


# ---------------------------------------------------------------------------------------- when
def swap_due(entry, step: int) -> bool:
    """Whether ``entry``'s layers run on the kernel after ``step`` optimizer steps: it asks for a kernel and
    its mask is final (``step >= entry.final_step``; the recipe refuses ``refresh_every`` with a kernel)."""
    # kernel: 2:4 is not a swap of this kind: SparseLinear24 keeps the dense-shaped Parameter (swap_linear_24)
    return entry.kernel not in ("none", "2:4") and not entry.refresh_every and step >= entry.final_step


# ---------------------------------------------------------------------------------------- checks
def check_swappable_model(model: nn.Module, where: str) -> None:
    """Refuse models whose modules cannot be replaced under their wrapper: DDP's reducer and FSDP hold the
    original parameters (the swapped block data would train without gradient averaging or sharding)."""
    ddp = getattr(getattr(torch.nn, "parallel", None), "DistributedDataParallel", None)
    wrapped = [type(m).__name__ for m in model.modules()
               if (ddp is not None and isinstance(m, ddp)) or type(m).__name__.startswith(("FSDP", "FullyShardedDataParallel"))]
    dtensor = any(type(p.data).__name__ == "DTensor" for p in model.parameters())
    if wrapped or dtensor:
        what = wrapped[0] if wrapped else "DTensor (sharded) parameters"
        raise ValueError(f"{where}: kernel: block-sparse replaces Linear modules in place, which a model "
                         f"wrapped in {what} cannot follow (the wrapper keeps the original parameters); "
                         f"use kernel: none under DDP/FSDP, or swap before wrapping")


def check_swappable_optimizer(state_opt: torch.optim.Optimizer, where: str) -> None:
    """Refuse optimizers whose per-weight state is not elementwise (it could not be gathered to the blocks)."""
    name = type(state_opt).__name__
    if not (type(state_opt).__module__.startswith("torch.optim") and name in ELEMENTWISE_OPTIMIZERS):
        raise ValueError(f"{where}: kernel: block-sparse carries the optimizer state of the swapped weights to the "
                         f"kept blocks, which needs an elementwise torch optimizer ({', '.join(ELEMENTWISE_OPTIMIZERS)}); "
                         f"got {type(state_opt).__module__}.{name}")


def check_swappable_module(module: nn.Module, fqn: str, where: str) -> None:
    if type(module) is not nn.Linear:
        raise ValueError(f"{where}: kernel: block-sparse replaces plain torch.nn.Linear modules; {fqn} is a "
                         f"{type(module).__module__}.{type(module).__name__} (its owner may use the weight "
                         f"directly); exclude it or use kernel: none")


# ---------------------------------------------------------------------------------------- surgery
def block_mask_of(mask: torch.Tensor, block: int) -> torch.Tensor:
    """``torch.bool [out/B, in/B]`` of an element mask ``[out, in]`` made of whole ``B x B`` blocks."""
    out_f, in_f = mask.shape
    blocks = mask.reshape(out_f // block, block, in_f // block, block)
    bm = blocks.any(dim=(1, 3))
    if not bool((blocks.all(dim=(1, 3)) == bm).all()):
        raise ValueError(f"mask: expected whole {block}x{block} blocks kept or dropped")
    return bm


def _parent(model: nn.Module, fqn: str) -> tuple[nn.Module, str]:
    parent_fqn, _, name = fqn.rpartition(".")
    return (model.get_submodule(parent_fqn) if parent_fqn else model), name


@torch.no_grad()
def swap_linear(model: nn.Module, fqn: str, block_mask: torch.Tensor) -> BlockSparseLinear:
    """Replace the ``nn.Linear`` at ``fqn`` in ``model`` by an :class:`sparse.nn.BlockSparseLinear` with the
    kept blocks (``block_mask`` bool ``[out/B, in/B]``) of its weight; the bias Parameter is reused,
    ``requires_grad`` and train/eval mode are carried. Returns the new module."""
    parent, name = _parent(model, fqn)
    linear = getattr(parent, name)
    check_swappable_module(linear, fqn, "swap")
    new = BlockSparseLinear.from_dense(linear, block_mask)
    if linear.bias is not None:
        new.bias = linear.bias  # the same Parameter: its optimizer state and references stay valid
    new.weight_data.requires_grad_(linear.weight.requires_grad)
    new.train(linear.training)
    setattr(parent, name, new)
    return new


def move_param(optimizer: torch.optim.Optimizer, state_opt: torch.optim.Optimizer, old: torch.Tensor,
               new: torch.Tensor, layout: BlockLayout | None) -> None:
    """Put ``new`` where ``old`` is in ``optimizer.param_groups`` and move ``old``'s state to it; with a
    ``layout``, state tensors of ``old``'s shape are gathered to its kept blocks (``layout.from_dense``),
    without one they are moved as they are (they are in the block layout already: a loaded state)."""
    found = False
    for g in optimizer.param_groups:
        for i, p in enumerate(g["params"]):
            if p is old:
                g["params"][i] = new
                found = True
    if not found:
        return  # a frozen weight outside the optimizer
    st = state_opt.state.pop(old, None)
    if not st:
        return
    carried = {}
    for k, v in st.items():
        if layout is not None and isinstance(v, torch.Tensor) and v.dim() and tuple(v.shape) == tuple(old.shape):
            v = layout.from_dense(v)
        elif isinstance(v, torch.Tensor) and v.dim() and tuple(v.shape) != tuple(new.shape):
            raise ValueError(f"optimizer state {k!r} of shape {tuple(v.shape)} cannot follow the weight "
                             f"{tuple(old.shape)} to its kept blocks {tuple(new.shape)}")
        carried[k] = v
    state_opt.state[new] = carried


# ---------------------------------------------------------------------------------------- saving
def block_sparse_modules(model: nn.Module) -> dict[str, BlockSparseLinear]:
    """``{fqn: module}`` of the ``BlockSparseLinear`` modules in ``model``."""
    return {fqn: m for fqn, m in model.named_modules() if isinstance(m, BlockSparseLinear)}


def _layout_keys(mod: BlockSparseLinear) -> list[str]:
    return ["weight_data"] + [n for n, _ in mod.named_buffers(recurse=False)]


@torch.no_grad()
def dense_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model.state_dict()`` with every ``BlockSparseLinear`` expanded to an ``nn.Linear``'s entries
    (``weight`` dense-shaped with zeros in the pruned blocks, ``bias``): what the model's dense form loads."""
    sd = model.state_dict()
    mods = block_sparse_modules(model)
    if not mods:
        return sd
    out: dict[str, torch.Tensor] = {}
    drop = {f"{fqn}.{k}" if fqn else k: fqn for fqn, m in mods.items() for k in _layout_keys(m)}
    for k, v in sd.items():
        fqn = drop.get(k)
        if fqn is None:
            out[k] = v
        elif k.endswith(".weight_data") or k == "weight_data":
            out[f"{fqn}.weight" if fqn else "weight"] = mods[fqn].dense_weight().detach()
    return out


def save_block_sparse(model: nn.Module, folder: str) -> dict:
    """Write ``sparse_modules.safetensors`` (``<fqn>.weight_data`` and ``<fqn>.block_mask`` of each
    ``BlockSparseLinear``) and ``sparse_modules.json`` (their class, sizes, block size and kept-block
    count) into ``folder``, next to a dense-shaped model; :func:`load_block_sparse` reads them back.
    Returns the JSON record."""
    from safetensors.torch import save_file

    from ..io_utils import atomic_file, atomic_write_json

    mods = block_sparse_modules(model)
    tensors, record = {}, {}
    for fqn, m in mods.items():
        bm = m.block_mask
        tensors[f"{fqn}.weight_data"] = m.weight_data.detach().cpu().contiguous().clone()
        tensors[f"{fqn}.block_mask"] = bm.contiguous().cpu()
        record[fqn] = {"class": "BlockSparseLinear", "in_features": m.in_features, "out_features": m.out_features,
                       "block": m.block, "blocks_kept": int(bm.sum()), "bias": m.bias is not None,
                       "dtype": str(m.weight_data.dtype).removeprefix("torch.")}
    doc = {"format": _FORMAT, "version": _VERSION, "file": SPARSE_MODULES_FILE, "modules": record}
    os.makedirs(folder, exist_ok=True)
    with atomic_file(os.path.join(folder, SPARSE_MODULES_FILE), force=True) as tmp:
        save_file(tensors, tmp, metadata={"format": _FORMAT})
    atomic_write_json(os.path.join(folder, SPARSE_MODULES_JSON), doc)
    return doc


def _read_record(folder: str) -> dict[str, dict]:
    path = os.path.join(folder, SPARSE_MODULES_JSON)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{folder}: no {SPARSE_MODULES_JSON} (saved without --keep-sparse-modules?)")
    with open(path, "rb") as f:
        raw = f.read(_MAX_JSON_BYTES + 1)
    if len(raw) > _MAX_JSON_BYTES:
        raise ValueError(f"{path}: larger than {_MAX_JSON_BYTES} bytes")
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != _FORMAT or doc.get("version") != _VERSION:
        raise ValueError(f"{path}: expected format {_FORMAT!r} version {_VERSION}")
    mods = doc.get("modules")
    if not isinstance(mods, dict):
        raise ValueError(f"{path}: 'modules': expected a mapping fqn -> description")
    keys = {"class", "in_features", "out_features", "block", "blocks_kept", "bias", "dtype"}
    for fqn, d in mods.items():
        if not isinstance(d, dict) or set(d) != keys or d["class"] != "BlockSparseLinear":
            raise ValueError(f"{path}: modules[{fqn!r}]: expected a BlockSparseLinear description with keys "
                             f"{', '.join(sorted(keys))}")
        for k in ("in_features", "out_features", "block", "blocks_kept"):
            if type(d[k]) is not int or d[k] < 0:
                raise ValueError(f"{path}: modules[{fqn!r}].{k}: expected an integer >= 0, got {d[k]!r}")
        if d["block"] not in BLOCK_SIZES:
            raise ValueError(f"{path}: modules[{fqn!r}].block: expected one of {BLOCK_SIZES}, got {d['block']}")
    return mods


@torch.no_grad()
def load_block_sparse(model: nn.Module, folder: str) -> nn.Module:
    """Swap ``model``'s Linears named in ``folder``'s ``sparse_modules.json`` for the block-sparse modules
    saved there (:func:`save_block_sparse`), in place; returns ``model``.

    ``model`` is the folder's dense form (``AutoModelForSequenceClassification.from_pretrained(folder)``):
    each named module must be an ``nn.Linear`` of the recorded sizes whose weight is zero outside the saved
    block mask; the bias is that Linear's. Tensors are read with safetensors (no pickle).
    """
    from safetensors import safe_open

    mods = _read_record(folder)
    path = os.path.join(folder, SPARSE_MODULES_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{folder}: {SPARSE_MODULES_JSON} names {SPARSE_MODULES_FILE}, which is missing")
    plan = []
    with safe_open(path, framework="pt") as f:
        names = set(f.keys())
        for fqn, d in mods.items():
            where = f"{path}: {fqn}"
            try:
                linear = model.get_submodule(fqn)
            except AttributeError:
                raise ValueError(f"{where}: the model has no module {fqn}") from None
            if type(linear) is not nn.Linear or (linear.out_features, linear.in_features) != (d["out_features"],
                                                                                               d["in_features"]):
                raise ValueError(f"{where}: expected an nn.Linear {d['in_features']} -> {d['out_features']} in the "
                                 f"model, got {type(linear).__name__} {tuple(getattr(linear, 'weight', torch.empty(0)).shape)}")
            if (linear.bias is not None) != d["bias"]:
                raise ValueError(f"{where}: bias {d['bias']} recorded, the model's Linear has "
                                 f"{'one' if linear.bias is not None else 'none'}")
            b = d["block"]
            for k in ("weight_data", "block_mask"):
                if f"{fqn}.{k}" not in names:
                    raise ValueError(f"{where}: {fqn}.{k} missing from {SPARSE_MODULES_FILE}")
            bm = f.get_tensor(f"{fqn}.block_mask")
            data = f.get_tensor(f"{fqn}.weight_data")
            shape_bm = (d["out_features"] // b, d["in_features"] // b)
            if bm.dtype != torch.bool or tuple(bm.shape) != shape_bm or d["out_features"] % b or d["in_features"] % b:
                raise ValueError(f"{where}: block_mask: expected bool {shape_bm}, got {bm.dtype} {tuple(bm.shape)}")
            nnz = int(bm.sum())
            if nnz != d["blocks_kept"] or tuple(data.shape) != (nnz, b, b) or not data.is_floating_point():
                raise ValueError(f"{where}: weight_data: expected a float tensor ({nnz}, {b}, {b}), got "
                                 f"{data.dtype} {tuple(data.shape)}")
            outside = linear.weight.detach().reshape(shape_bm[0], b, shape_bm[1], b).abs().sum(dim=(1, 3))[~bm]
            if bool((outside != 0).any()):
                raise ValueError(f"{where}: the model's dense weight has non-zeros outside the saved block mask "
                                 f"(the model and {SPARSE_MODULES_FILE} come from different runs?)")
            plan.append((fqn, bm, data))
    for fqn, bm, data in plan:  # all checked: now change the model
        new = swap_linear(model, fqn, bm.to(model.get_submodule(fqn).weight.device))
        new.weight_data.copy_(data.to(new.weight_data.dtype))
    log.info("loaded %d block-sparse modules from %s", len(plan), folder)
    return model


# ---------------------------------------------------------------------------------------- 2:4 (SparseLinear24)
def check_kernel_24(pattern, device: torch.device | str, where: str) -> None:
    """Refuse a ``kernel: 2:4`` swap that cannot run: a pattern other than 2:4 (transposable or not) or a device
    without torch's 2:4 GEMMs (CPU: ``SparseLinear24`` has only its masked-dense fallback there, which is no
    faster than the masked ``nn.Linear``). ``pattern``: a ``sparse.pruning.patterns`` object or a recipe Pattern."""
    from .patterns import NMPattern, TransposableNMPattern, pattern_from_recipe

    try:
        pattern = pattern_from_recipe(pattern)
    except ValueError:
        pass
    if not isinstance(pattern, (NMPattern, TransposableNMPattern)) or (pattern.n, pattern.m) != (2, 4):
        shown = pattern.describe() if hasattr(pattern, "describe") else repr(pattern)
        raise ValueError(f"{where}: kernel: 2:4 runs 2:4 masks on NVIDIA sparse tensor cores; the pattern is {shown} "
                         f"(use pattern {{type: nm, n: 2, m: 4, transposable: true}} or kernel: none)")
    dev = torch.device(device)
    if dev.type != "cuda":
        raise ValueError(f"{where}: kernel: 2:4 needs a CUDA device with 2:4 sparse tensor cores (sm_80+); the model "
                         f"is on {dev} (on CPU use kernel: none: the masked dense Linear is the CPU path)")


@torch.no_grad()
def swap_linear_24(model: nn.Module, fqn: str, mask: torch.Tensor, transposable: bool, where: str = "swap"):
    """Replace the ``nn.Linear`` at ``fqn`` by a :class:`sparse.nn.SparseLinear24` with ``mask`` (its final or
    current 2:4 mask). The module keeps the Linear's weight and bias *Parameters*, so the optimizer, its state and
    ``SparseOptimizer``'s target are untouched; later mask refreshes reach the module through
    ``sparse.pruning.optim_state.notify_kernel_module`` and make it recompress. Returns the new module."""
    from ..nn.sparse24 import SparseLinear24

    parent, name = _parent(model, fqn)
    linear = getattr(parent, name)
    if type(linear) is not nn.Linear:
        raise ValueError(f"{where}: kernel: 2:4 replaces plain torch.nn.Linear modules; {fqn} is a "
                         f"{type(linear).__module__}.{type(linear).__name__}")
    new = SparseLinear24.from_dense(linear, transposable=transposable, mask=mask)
    setattr(parent, name, new)
    return new
