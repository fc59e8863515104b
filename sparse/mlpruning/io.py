"""Packed models on disk: a Hugging Face style folder that reloads to the same outputs.

Folder layout (written atomically with :func:`sparse.io_utils.atomic_dir`):

* ``config.json``: the model's HF config plus ``mlpruning``: ``{version, family, head_dim,
  dense_encoder_weights, encoder_weights, remaining_fraction, notes, layers: [{heads, attention_removed,
  intermediate_size, matrices: {role: {in, out, scatter_to, block, bias}}}]}``;
* ``model.safetensors``: the weights (``safetensors.torch.save_model``: shared tensors stored once);
* the tokenizer files, when a tokenizer or a folder holding them is known.

:func:`load_packed` builds the architecture from ``config.json`` with ``transformers`` (random weights),
gives every layer its packed shapes, and loads the tensors strictly with safetensors (never pickle).
"""
from __future__ import annotations

import copy
import dataclasses
import logging
import os
import shutil
from typing import Any

import torch
import torch.nn as nn

from ..io_utils import atomic_dir, atomic_file
from ..ops.layout import BlockLayout
from .config import MATRICES
from .families import encoder_layers, family_for_config, layer_prefixes
from .pack import rebuild_layer
from .pruner import FORMAT_VERSION, PACKED_KEY

__all__ = ["save_packed", "write_packed", "load_packed", "describe_packed", "TOKENIZER_FILES", "is_packed_folder"]

log = logging.getLogger(__name__)

WEIGHTS = "model.safetensors"
TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json", "vocab.json", "merges.txt", "sentencepiece.bpe.model", "spiece.model")


def _auto_classes() -> dict[str, Any]:
    """HF class-name suffix -> the transformers Auto class that builds it from a config."""
    import transformers as tf

    return {"Model": tf.AutoModel, "ForSequenceClassification": tf.AutoModelForSequenceClassification,
            "ForMaskedLM": tf.AutoModelForMaskedLM, "ForTokenClassification": tf.AutoModelForTokenClassification,
            "ForQuestionAnswering": tf.AutoModelForQuestionAnswering,
            "ForMultipleChoice": tf.AutoModelForMultipleChoice}


def _copy_tokenizer(src: str, dst: str) -> list[str]:
    copied = []
    for name in TOKENIZER_FILES:
        path = os.path.join(src, name)
        if os.path.isfile(path) and not os.path.islink(path):
            shutil.copyfile(path, os.path.join(dst, name))
            copied.append(name)
    return copied


def _check_packed(model: nn.Module) -> dict:
    record = getattr(getattr(model, "config", None), PACKED_KEY, None)
    if not isinstance(record, dict):
        raise ValueError(f"model: not a packed MLPruning model (its config has no {PACKED_KEY!r} record); "
                         f"save pruner.pack() or call pruner.save_packed(path)")
    return record


def write_packed(model: nn.Module, folder: str | os.PathLike, *, tokenizer: Any = None) -> None:
    """Write ``config.json``, ``model.safetensors`` and the tokenizer of a packed model into the existing
    ``folder``, replacing those files (each written atomically). :func:`save_packed` is the whole-folder,
    all-or-nothing version; this one serves callers that put more files next to the model (a fine-tuning
    run's ``result.json``)."""
    from safetensors.torch import save_model

    record = _check_packed(model)
    folder = os.fspath(folder)
    cfg = copy.deepcopy(model.config)
    cfg.architectures = [type(model).__name__]
    with atomic_file(os.path.join(folder, "config.json"), force=True) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(cfg.to_json_string())
    with atomic_file(os.path.join(folder, WEIGHTS), force=True) as tmp:
        save_model(model, tmp, metadata={"format": "pt", "mlpruning": str(FORMAT_VERSION)})
    if tokenizer is not None and hasattr(tokenizer, "save_pretrained"):
        tokenizer.save_pretrained(folder)
    else:
        src = os.fspath(tokenizer) if tokenizer is not None else getattr(model, "name_or_path", "")
        copied = _copy_tokenizer(src, folder) if src and os.path.isdir(src) else []
        if tokenizer is not None and not copied:
            raise ValueError(f"tokenizer: no tokenizer files ({', '.join(TOKENIZER_FILES[:4])}, ...) in {src!r}")
        if not copied:
            log.info("no tokenizer saved with the packed model (pass tokenizer=... to include one)")
    log.info("saved the packed model (%.1f%% of the dense encoder weights) to %s",
             100 * record.get("remaining_fraction", float("nan")), folder)


def save_packed(model: nn.Module, path: str | os.PathLike, *, tokenizer: Any = None, force: bool = False) -> str:
    """Write a packed model (from :meth:`MLPruner.pack`) to the new folder ``path``, all or nothing.

    Args:
        tokenizer: a tokenizer object (``save_pretrained``), a folder to copy tokenizer files from, or
            None: copied from the model's ``name_or_path`` folder when it holds them.
        force: replace an existing ``path``.

    Returns the folder. Raises ``ValueError`` for a model that is not packed (or a ``tokenizer`` folder
    without tokenizer files), ``FileExistsError`` for an existing ``path`` without ``force``.
    """
    _check_packed(model)
    path = os.fspath(path)
    with atomic_dir(path, force=force) as tmp:
        write_packed(model, tmp, tokenizer=tokenizer)
    return path


def is_packed_folder(path: str | os.PathLike) -> bool:
    """True when ``path`` is a folder whose ``config.json`` carries an ``mlpruning`` record."""
    import json

    cfg = os.path.join(os.fspath(path), "config.json")
    if not os.path.isfile(cfg):
        return False
    try:
        with open(cfg, encoding="utf-8") as f:
            return isinstance(json.load(f).get(PACKED_KEY), dict)
    except (OSError, ValueError):
        return False


def _check_record(record: Any, n_layers: int) -> None:
    def bad(key: str, expected: str, got: Any):
        raise ValueError(f"config.json: {PACKED_KEY}.{key}: expected {expected}, got {got!r}")

    if not isinstance(record, dict):
        bad("", "a mapping", record)
    if record.get("version") != FORMAT_VERSION:
        bad("version", str(FORMAT_VERSION), record.get("version"))
    layers = record.get("layers")
    if not isinstance(layers, list) or len(layers) != n_layers:
        bad("layers", f"a list of {n_layers} layer records", layers)
    for i, lr in enumerate(layers):
        if not isinstance(lr, dict) or not isinstance(lr.get("heads"), int) or lr["heads"] < 0:
            bad(f"layers[{i}].heads", "an integer >= 0", lr.get("heads") if isinstance(lr, dict) else lr)
        mats = lr.get("matrices")
        if not isinstance(mats, dict):
            bad(f"layers[{i}].matrices", "a mapping", mats)
        for role, spec in mats.items():
            where = f"layers[{i}].matrices.{role}"
            if not isinstance(spec, dict):
                bad(where, "a mapping", spec)
            for k in ("in", "out"):
                if not isinstance(spec.get(k), int) or spec[k] < 0:
                    bad(f"{where}.{k}", "an integer >= 0", spec.get(k))
            for k in ("scatter_to", "block"):
                if spec.get(k) is not None and (not isinstance(spec[k], int) or spec[k] < 1):
                    bad(f"{where}.{k}", "null or an integer >= 1", spec.get(k))
            if not isinstance(spec.get("bias"), bool):
                bad(f"{where}.bias", "true or false", spec.get("bias"))


def load_packed(path: str | os.PathLike, *, dtype: torch.dtype | None = None) -> nn.Module:
    """Load a folder written by :func:`save_packed` (or :meth:`MLPruner.save_packed`).

    Args:
        dtype: the parameters' dtype (default: the saved floating-point dtype).

    Returns the packed model in eval mode, on the CPU, with the outputs it had when saved.

    Raises:
        FileNotFoundError: no ``config.json`` / ``model.safetensors`` in ``path``.
        ValueError: not a packed MLPruning folder, or a malformed record.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from safetensors import safe_open
    from safetensors.torch import load_model
    from transformers import AutoConfig

    path = os.fspath(path)
    for name in ("config.json", WEIGHTS):
        if not os.path.isfile(os.path.join(path, name)):
            raise FileNotFoundError(f"path: {path!r} has no {name} (expected a folder written by save_packed)")
    config = AutoConfig.from_pretrained(path)
    record = getattr(config, PACKED_KEY, None)
    if not isinstance(record, dict):
        raise ValueError(f"path: {path!r} is not a packed MLPruning folder (config.json has no {PACKED_KEY!r} "
                         f"record); load it with transformers' from_pretrained")
    family = family_for_config(config, "path")
    arch = (getattr(config, "architectures", None) or [f"{family.class_prefix}Model"])[0]
    suffix = arch[len(family.class_prefix):] if arch.startswith(family.class_prefix) else None
    autos = _auto_classes()
    if suffix not in autos:
        raise ValueError(f"config.json: architectures: expected {family.class_prefix} + one of {', '.join(autos)}, "
                         f"got {arch!r}")
    config._name_or_path = path  # the model's name_or_path: where it came from (messages, tokenizer)
    model = autos[suffix].from_config(config)
    if type(model).__name__ != arch:
        raise ValueError(f"config.json: architectures: {arch!r} builds {type(model).__name__}")
    layers = encoder_layers(model, family)
    _check_record(record, len(layers))
    weights = os.path.join(path, WEIGHTS)
    fields = [f.name for f in dataclasses.fields(BlockLayout) if f.name not in ("block", "shape")]
    prefixes = layer_prefixes(model, family)
    with safe_open(weights, framework="pt") as reader:
        keys = set(reader.keys())
        float_dtypes = {reader.get_slice(k).get_dtype() for k in keys}
        for i, (layer, lr) in enumerate(zip(layers, record["layers"])):
            def block_mask_of(role, rows, cols, block, scattered, i=i):
                key = prefixes[i] + family.matrices[role] + (".linear" if scattered else "")
                missing = [f"{key}.{n}" for n in fields if f"{key}.{n}" not in keys]
                if missing:
                    raise ValueError(f"path: {WEIGHTS} lacks the block layout {missing[0]} of a block-sparse matrix")
                tensors = [reader.get_tensor(f"{key}.{n}") for n in fields]
                return BlockLayout.from_tensors(block, (rows, cols), tensors).mask()
            rebuild_layer(layer, family, lr, int(record["head_dim"]), block_mask_of)
    if dtype is None:
        saved = [d for d in ("BF16", "F16", "F32", "F64") if d in float_dtypes]
        dtype = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "F64": torch.float64}[
            saved[0]] if saved else torch.float32
    model.to(dtype)
    missing, unexpected = load_model(model, weights, strict=True)
    return model.eval()


def describe_packed(path: str | os.PathLike) -> dict | None:
    """Summary of a packed folder's ``config.json`` record, or None when ``path`` is not one.

    Returns ``{family, dense_encoder_weights, encoder_weights, remaining_fraction, notes, layers: [{layer,
    heads, of_heads, intermediate_size, of_intermediate, attn_out_rows, ffn_out_rows, hidden,
    block_sparse: [roles]}]}``.
    """
    import json

    path = os.fspath(path)
    if not is_packed_folder(path):
        return None
    with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
        cfg = json.load(f)
    record = cfg[PACKED_KEY]
    family = family_for_config(type("Config", (), {"model_type": cfg.get("model_type")})(), "path")
    hidden = cfg.get(family.hidden_config)
    layers = []
    for i, lr in enumerate(record.get("layers", [])):
        mats = lr.get("matrices", {})

        def rows(role):
            spec = mats.get(role) or {}
            return spec.get("out") if spec.get("scatter_to") is not None else hidden
        layers.append({"layer": i, "heads": lr.get("heads"), "of_heads": cfg.get(family.heads_config),
                       "intermediate_size": lr.get("intermediate_size"), "of_intermediate": cfg.get(family.ffn_config),
                       "attn_out_rows": rows("attn_out"), "ffn_out_rows": rows("ffn_out"), "hidden": hidden,
                       "block_sparse": [r for r in MATRICES if (mats.get(r) or {}).get("block")]})
    return {"family": record.get("family"), "dense_encoder_weights": record.get("dense_encoder_weights"),
            "encoder_weights": record.get("encoder_weights"), "remaining_fraction": record.get("remaining_fraction"),
            "notes": list(record.get("notes", [])), "layers": layers}
