"""What SRC is: one safetensors file, a sharded index, a ``.pt``/``.bin`` state dict, or an HF folder.

Each kind is described by a :class:`Source`: its weight shards (read and written one at a time)
and, for folders, the other files that are copied verbatim (config, tokenizer, index JSONs).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

SAFETENSORS_EXT = (".safetensors",)
TORCH_EXT = (".pt", ".pth", ".bin")
# HF weight files, in the order transformers prefers them.
HF_WEIGHTS = ("model.safetensors.index.json", "model.safetensors", "pytorch_model.bin.index.json",
              "pytorch_model.bin")


@dataclass
class Shard:
    """One weight file: ``path`` to read, ``rel`` its path relative to the output root."""
    path: str
    rel: str
    kind: str  # "safetensors" | "torch"


@dataclass
class Source:
    kind: str                # "safetensors" | "torch" | "sharded" | "hf"
    path: str
    shards: list[Shard]
    is_dir_output: bool      # DST is a folder (sharded, hf) or a single file
    root: str | None = None  # folder whose other files are copied (hf) / index folder (sharded)
    copy: list[str] = field(default_factory=list)  # paths relative to root copied verbatim


def _kind_of(path: str) -> str:
    low = path.lower()
    if low.endswith(SAFETENSORS_EXT):
        return "safetensors"
    if low.endswith(TORCH_EXT):
        return "torch"
    raise ValueError(f"src: expected a .safetensors, .pt, .pth or .bin file, a sharded index .json, or an HF model "
                     f"folder, got {path!r}")


def _read_index(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8") as f:
            index = json.load(f)
        weight_map = index["weight_map"]
        if not isinstance(weight_map, dict) or not weight_map:
            raise TypeError
        files = sorted(set(weight_map.values()))
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: corrupt shard index (expected JSON with a non-empty 'weight_map'): "
                         f"{type(exc).__name__}") from None
    base = os.path.dirname(os.path.abspath(path))
    for rel in files:
        if not isinstance(rel, str) or os.path.isabs(rel) or ".." in rel.split("/"):
            raise ValueError(f"{path}: shard name {rel!r} must be a relative path inside the index's folder")
        if not os.path.isfile(os.path.join(base, rel)):
            raise FileNotFoundError(f"{path}: shard {rel!r} listed in the index does not exist")
    return files


def _sharded(index_path: str) -> list[Shard]:
    base = os.path.dirname(os.path.abspath(index_path))
    return [Shard(os.path.join(base, rel), rel, _kind_of(rel)) for rel in _read_index(index_path)]


def _walk_files(root: str) -> list[str]:
    out = []
    for d, _, files in os.walk(root):
        for name in files:
            out.append(os.path.relpath(os.path.join(d, name), root))
    return sorted(out)


def resolve_source(path: str) -> Source:
    """Classify ``path``; raise ``FileNotFoundError``/``ValueError`` for a missing or unusable one."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"src: {path!r} does not exist")
    if os.path.isdir(path):
        found = next((w for w in HF_WEIGHTS if os.path.isfile(os.path.join(path, w))), None)
        if found is None:
            raise ValueError(f"src: folder {path!r} holds none of {', '.join(HF_WEIGHTS)} (expected an HF model folder)")
        weights = os.path.join(path, found)
        shards = _sharded(weights) if found.endswith(".json") else [Shard(weights, found, _kind_of(found))]
        shard_rels = {s.rel for s in shards}
        copy = [rel for rel in _walk_files(path) if rel not in shard_rels]
        return Source("hf", path, shards, True, root=path, copy=copy)
    if path.lower().endswith(".json"):
        shards = _sharded(path)
        return Source("sharded", path, shards, True, root=os.path.dirname(os.path.abspath(path)),
                      copy=[os.path.basename(path)])
    kind = _kind_of(path)
    return Source(kind, path, [Shard(path, os.path.basename(path), kind)], False)
