"""``.pt`` / ``.bin`` state dicts: loaded only with ``weights_only=True`` (no code can run)."""
from __future__ import annotations

import pickle
import zipfile

import torch


def load_state_dict(path: str) -> dict[str, torch.Tensor]:
    """Load a flat ``{name: tensor}`` state dict from ``path`` without running any pickled code.

    A pickle that would call functions or build arbitrary objects is refused by torch's
    weights-only unpickler *before* anything runs; that, a truncated/corrupt archive, and a file
    that is not a flat tensor mapping each raise one ``ValueError`` naming the file.
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
    return obj


def save_state_dict(tensors: dict[str, torch.Tensor], path: str) -> None:
    """Save with torch's zip format (loadable again with ``weights_only=True``)."""
    torch.save(tensors, path)
