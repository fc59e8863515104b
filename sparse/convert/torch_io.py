"""``.pt`` / ``.bin`` state dicts: loaded only with ``weights_only=True`` (no code can run)."""
from __future__ import annotations

import pickle
import zipfile

import torch


def load_state_dict(path: str, merge_pruned: bool = True) -> dict[str, torch.Tensor]:
    """Load a flat ``{name: tensor}`` state dict from ``path`` without running any pickled code.

    A pickle that would call functions or build arbitrary objects is refused by torch's
    weights-only unpickler *before* anything runs; that, a truncated/corrupt archive, a file that
    is not a flat tensor mapping, and tensors that are not dense CPU data (sparse layouts, meta)
    each raise one ``ValueError`` naming the file (and the tensor).

    With ``merge_pruned``, ``torch.nn.utils.prune`` pairs ``X_orig`` + ``X_mask`` come back as the
    pruned ``X = X_orig * X_mask`` (see :func:`pruned_pairs`), at ``X_orig``'s place.
    """
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            # Legacy (non-zip) serialisation cannot be memory-mapped; load it normally.
            if "mmap" not in str(exc):
                raise
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"{path}: refusing to load: it is not a plain tensor checkpoint and unpickling it could "
                         f"run code (loaded with weights_only=True: {first})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"{path}: corrupt or truncated torch checkpoint ({first})") from None
    if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        got = type(obj).__name__ if not isinstance(obj, dict) else "a dict with non-tensor values"
        raise ValueError(f"{path}: expected a flat state dict {{name: tensor}}, got {got}")
    for name, t in obj.items():
        # weights_only still rebuilds sparse and meta tensors; nothing downstream can read them.
        if t.layout != torch.strided or t.device.type != "cpu":
            raise ValueError(f"{path}: tensor {name!r} is a {t.layout} tensor on {t.device}; expected dense (strided) "
                             f"tensors with data")
    if not merge_pruned:
        return obj
    pairs = pruned_pairs({k: tuple(v.shape) for k, v in obj.items()}, path)
    if not pairs:
        return obj
    masks = {mask: base for base, (_, mask) in pairs.items()}
    bases = {orig: base for base, (orig, _) in pairs.items()}
    out = {}
    for name, t in obj.items():
        if name in bases:
            base = bases[name]
            out[base] = apply_prune_mask(t, obj[pairs[base][1]], name, pairs[base][1], path)
        elif name not in masks:
            out[name] = t
    return out


_ORIG, _MASK = "_orig", "_mask"


def pruned_pairs(shapes: dict[str, tuple[int, ...]], path: str) -> dict[str, tuple[str, str]]:
    """``{X: (X_orig, X_mask)}`` for the ``torch.nn.utils.prune`` pairs among ``shapes`` (name -> shape).

    Pruning reparametrises a parameter ``X`` as ``X_orig`` (parameter) and ``X_mask`` (buffer), and
    the state dict holds only those two. Every ``X_orig`` needs its ``X_mask`` with the same shape
    and no plain ``X`` beside them; in such a checkpoint a ``X_mask`` needs its ``X_orig`` too.
    Anything else is a ``ValueError`` naming both keys. In a checkpoint without any ``*_orig`` key,
    ``*_mask`` names are ordinary tensors (attention-mask buffers are common).
    """
    origs = {n[:-len(_ORIG)]: n for n in shapes if n.endswith(_ORIG)}
    if not origs:
        return {}
    pairs = {}
    for base, orig in origs.items():
        mask = base + _MASK
        if mask not in shapes:
            raise ValueError(f"{path}: {orig!r} has no matching {mask!r} (a torch.nn.utils.prune checkpoint holds "
                             f"both; the pruned {base!r} is {orig!r} * {mask!r})")
        if tuple(shapes[orig]) != tuple(shapes[mask]):
            raise ValueError(f"{path}: {orig!r} has shape {list(shapes[orig])} but {mask!r} has shape "
                             f"{list(shapes[mask])}; a prune mask has its parameter's shape")
        if base in shapes:
            raise ValueError(f"{path}: holds {base!r} and also the pruned pair {orig!r} / {mask!r}: which one is "
                             f"the weight is ambiguous")
        pairs[base] = (orig, mask)
    for name in shapes:
        if name.endswith(_MASK) and name[:-len(_MASK)] not in pairs:
            orig = name[:-len(_MASK)] + _ORIG
            raise ValueError(f"{path}: {name!r} has no matching {orig!r} in this torch.nn.utils.prune checkpoint "
                             f"(a prune mask needs its parameter)")
    return pairs


def apply_prune_mask(orig: torch.Tensor, mask: torch.Tensor, orig_name: str, mask_name: str,
                     path: str) -> torch.Tensor:
    """What ``torch.nn.utils.prune`` computes at forward time: ``orig * mask``, in ``orig``'s dtype."""
    if orig.shape != mask.shape:
        raise ValueError(f"{path}: {orig_name!r} has shape {list(orig.shape)} but {mask_name!r} has shape "
                         f"{list(mask.shape)}")
    try:
        return orig * mask.to(orig.dtype)
    except NotImplementedError:
        raise ValueError(f"{path}: cannot apply {mask_name!r} ({mask.dtype}) to {orig_name!r}: torch has no "
                         f"arithmetic for {orig.dtype}") from None


def save_state_dict(tensors: dict[str, torch.Tensor], path: str) -> None:
    """Save with torch's zip format (loadable again with ``weights_only=True``)."""
    torch.save(tensors, path)
