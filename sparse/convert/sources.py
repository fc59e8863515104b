"""What SRC is: one safetensors file, a sharded index, a ``.pt``/``.bin`` state dict, or an HF folder.

Each kind is described by a :class:`Source`: its weight shards (read and written one at a time)
and, for folders, the other files that are copied verbatim (config, tokenizer, index JSONs).

Symbolic links among a folder's other files are never followed out of the folder: a link that
resolves inside it is recreated as a relative link (so OUT refers to its own copy), any other link
(outside, dangling, looping) is skipped with a warning, and so are FIFOs, sockets and devices. The
one exception is the Hugging Face hub cache, whose ``snapshots/<rev>/`` files are links into the
same repository's ``blobs/``: those are copied as regular files.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

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
    links: dict[str, str] = field(default_factory=dict)    # rel -> relative target, recreated as a link
    skipped: dict[str, str] = field(default_factory=dict)  # rel -> why it is not copied
    follow: set[str] = field(default_factory=set)          # entries of ``copy`` read through a link


def _kind_of(path: str) -> str:
    low = path.lower()
    if low.endswith(SAFETENSORS_EXT):
        return "safetensors"
    if low.endswith(TORCH_EXT):
        return "torch"
    raise ValueError(f"src: expected a .safetensors, .pt, .pth or .bin file, a sharded index .json, or an HF model "
                     f"folder, got {path!r}")


_MAX_INDEX = 100_000_000  # bytes; real indexes are kilobytes, this only bounds memory


def _read_index(path: str) -> list[str]:
    """The shard files of a sharded index, normalised, each once; ``ValueError`` naming the index
    for anything but a JSON object with a non-empty ``weight_map`` of relative file names."""
    def corrupt(why: str) -> ValueError:
        return ValueError(f"{path}: corrupt shard index ({why})")

    size = os.path.getsize(path)
    if size > _MAX_INDEX:
        raise corrupt(f"{size} bytes, over the {_MAX_INDEX}-byte limit")
    try:
        with open(path, "rb") as f:
            index = json.loads(f.read().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise corrupt(f"not UTF-8: {exc}") from None
    except RecursionError:
        raise corrupt("JSON nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, integers with too many digits
        raise corrupt(f"not valid JSON: {str(exc)[:200]}") from None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise corrupt("expected a JSON object with a non-empty 'weight_map' object")
    files = set()
    for tensor, rel in weight_map.items():
        if (not isinstance(rel, str) or not rel or os.path.isabs(rel) or ".." in rel.split("/")
                or os.path.normpath(rel) == "."):
            raise ValueError(f"{path}: shard name {str(rel)[:200]!r} of tensor {tensor[:200]!r} must be a "
                             f"relative path (a file name) inside the index's folder")
        files.add(os.path.normpath(rel))  # "a.safetensors" and "./a.safetensors" are one shard
    base = os.path.dirname(os.path.abspath(path))
    for rel in sorted(files):
        if not os.path.isfile(os.path.join(base, rel)):
            raise FileNotFoundError(f"{path}: shard {rel!r} listed in the index does not exist")
    return sorted(files)


def _sharded(index_path: str) -> list[Shard]:
    base = os.path.dirname(os.path.abspath(index_path))
    return [Shard(os.path.join(base, rel), rel, _kind_of(rel)) for rel in _read_index(index_path)]


def _walk(root: str) -> tuple[list[str], list[str], dict[str, str]]:
    """``(regular files, symlinks, {special file: why})`` under ``root``, as relative paths.

    Symlinked directories are listed as links and never descended into."""
    files, links, special = [], [], {}
    stack = [""]
    while stack:
        reldir = stack.pop()
        try:
            entries = list(os.scandir(os.path.join(root, reldir)))
        except OSError as exc:
            special[reldir] = f"unreadable folder ({exc.strerror})"
            continue
        for e in entries:
            rel = os.path.join(reldir, e.name) if reldir else e.name
            if e.is_symlink():
                links.append(rel)
            elif e.is_dir(follow_symlinks=False):
                stack.append(rel)
            elif e.is_file(follow_symlinks=False):
                files.append(rel)
            else:
                special[rel] = "not a regular file (FIFO, socket or device)"
    return sorted(files), sorted(links), special


def _inside(path: str, folder: str) -> bool:
    return os.path.commonpath([path, folder]) == folder


def _hf_cache_blobs(root_real: str) -> str | None:
    """``<repo>/blobs`` when ``root_real`` is a hub-cache ``<repo>/snapshots/<rev>`` folder."""
    snapshots = os.path.dirname(root_real)
    blobs = os.path.join(os.path.dirname(snapshots), "blobs")
    if os.path.basename(snapshots) == "snapshots" and os.path.isdir(blobs) and not os.path.islink(blobs):
        return os.path.realpath(blobs)
    return None


def _folder_files(root: str, exclude: set[str]) -> tuple[list[str], dict[str, str], dict[str, str], set[str]]:
    """Classify the files of folder ``root`` (minus ``exclude``) for copying: see the module docstring."""
    files, links, skipped = _walk(root)
    root_real = os.path.realpath(root)
    blobs = _hf_cache_blobs(root_real)
    copy = [rel for rel in files if rel not in exclude]
    recreate, follow = {}, set()
    for rel in links:
        if rel in exclude:
            continue
        path = os.path.join(root, rel)
        target = os.readlink(path)
        real = os.path.realpath(path)
        if not os.path.exists(path):
            skipped[rel] = f"dangling or looping link (to {target!r})"
        elif _inside(real, root_real):
            if any(s.startswith(rel + os.sep) for s in exclude):
                skipped[rel] = "a linked folder holding weight shards (the shards are written as files)"
            else:
                parent = os.path.dirname(os.path.join(root_real, rel))
                recreate[rel] = os.path.relpath(real, parent)
        elif blobs is not None and _inside(real, blobs) and os.path.isfile(real):
            copy.append(rel)
            follow.add(rel)
        else:
            skipped[rel] = f"a link to {target!r}, outside the source folder (not followed)"
    for rel in exclude:
        skipped.pop(rel, None)
    return sorted(copy), recreate, skipped, follow


def copy_extra_files(source: Source, out_root: str) -> None:
    """Copy a folder source's other files into ``out_root``: regular files by content (never
    through a link, unless vetted), in-folder links as relative links; skipped ones are logged."""
    for rel, why in sorted(source.skipped.items()):
        log.warning("not copying %s: %s", os.path.join(source.root, rel), why)
    for rel in source.copy:
        out = os.path.join(out_root, rel)
        os.makedirs(os.path.dirname(out), exist_ok=True)
        # follow_symlinks=False: a file swapped for a link since it was listed is copied as that
        # link, never as the content it points to.
        shutil.copy2(os.path.join(source.root, rel), out, follow_symlinks=rel in source.follow)
    for rel, target in sorted(source.links.items()):
        out = os.path.join(out_root, rel)
        os.makedirs(os.path.dirname(out), exist_ok=True)
        os.symlink(target, out)


def resolve_source(path: str) -> Source:
    """Classify ``path``; raise ``FileNotFoundError``/``ValueError`` for a missing or unusable one."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"src: {path!r} does not exist")
    if os.path.isdir(path):
        found = next((w for w in HF_WEIGHTS if os.path.isfile(os.path.join(path, w))), None)
        if found is None:
            raise ValueError(f"src: folder {path!r} holds none of {', '.join(HF_WEIGHTS)} "
                             f"(expected an HF model folder)")
        weights = os.path.join(path, found)
        shards = _sharded(weights) if found.endswith(".json") else [Shard(weights, found, _kind_of(found))]
        copy, links, skipped, follow = _folder_files(path, {os.path.normpath(s.rel) for s in shards})
        return Source("hf", path, shards, True, root=path, copy=copy, links=links, skipped=skipped,
                      follow=follow)
    if not os.path.isfile(path):
        raise ValueError(f"src: {path!r} is not a regular file or folder")
    if path.lower().endswith(".json"):
        shards = _sharded(path)
        # The index is the file the user named: copied by content even if it is a link.
        name = os.path.basename(path)
        return Source("sharded", path, shards, True, root=os.path.dirname(os.path.abspath(path)),
                      copy=[name], follow={name})
    kind = _kind_of(path)
    return Source(kind, path, [Shard(path, os.path.basename(path), kind)], False)
