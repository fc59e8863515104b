"""The recipe's ``data:`` block (issue 16): packaged datasets or a user's files, split sizes, strict keys."""
import glob
import os

import pytest
import yaml

from sparse.recipe import DataConfig, RecipeError, load_recipe

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def data(**d):
    return load_recipe({"name": "t", "data": d}).data


def test_defaults_bbc_news_with_a_tenth_for_validation():
    assert data() == DataConfig() and DataConfig().dataset == "bbc_news"
    assert (DataConfig().test_size, DataConfig().val_size, DataConfig().train_size) == (0.2, 0.1, None)
    # the shipped BBC recipes say nothing about validation: they take the default
    assert load_recipe(os.path.join(ROOT, "recipes", "minilm-bbc-dense.yaml")).data.val_size == 0.1


def test_tweets_defaults_to_the_benchmark_sizes_unless_given():
    d = data(dataset="tweets")
    assert (d.train_size, d.val_size, d.test_size) == (12000, 2000, 4000)
    d = data(dataset="tweets", val_size=0.1)
    assert d.val_size == 0.1 and d.test_size == 4000


def test_file_formats():
    d = data(format="csv", path="train.csv", val_path="v.csv", test_path="t.csv", text="body", label="y",
             text_pair="h", encoding="Latin-1")
    assert d.dataset is None and d.format == "csv" and (d.text, d.label, d.text_pair) == ("body", "y", "h")
    assert d.encoding == "iso8859-1"  # normalised by codecs
    assert data(format="jsonl", path="a.jsonl").val_size == 0.1
    assert data(format="hf", path="./saved").path == "./saved"
    assert data(format="csv", path="a.csv", val_size=300, test_size=0.25).val_size == 300


def test_round_trip_through_to_dict():
    r = load_recipe({"name": "t", "data": {"format": "csv", "path": "a.csv", "text_pair": "h", "train_size": 50}})
    assert load_recipe(yaml.safe_load(yaml.safe_dump(r.to_dict()))) == r
    for name in ("minilm-bbc-dense", "minilm-tweets-2of4-transposable"):
        r = load_recipe(os.path.join(ROOT, "recipes", f"{name}.yaml"))
        assert data(**yaml.safe_load(yaml.safe_dump(r.to_dict()["data"]))) == r.data


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "recipes", "*.yaml"))),
                         ids=lambda p: os.path.basename(p))
def test_every_shipped_recipe_round_trips_through_to_dict(path):
    """What a run folder saves as its recipe (``result.json`` ``recipe_config``) loads back to the same
    recipe: pattern, method and schedule blocks keyed by ``type``, only the keys of their type."""
    r = load_recipe(path)
    again = load_recipe(yaml.safe_load(yaml.safe_dump(r.to_dict())))
    assert again.replace(source=None) == r.replace(source=None)


@pytest.mark.parametrize("d,match", [
    ({"format": "csv"}, r"^data\.path: required with data\.format 'csv'"),
    ({"format": "csv", "path": "a", "dataset": "bbc_news"}, r"^data\.dataset: give either dataset \(bbc_news, tweets\) "
                                                            r"or format \(csv, jsonl, hf\), not both"),
    ({"path": "a.csv"}, r"^data\.path: only with data\.format \(csv, jsonl, hf\)"),
    ({"dataset": "tweets", "text": "x"}, r"^data\.text: only with data\.format"),
    ({"format": "hf", "path": "x", "test_path": "t"}, r"^data\.test_path: only with format csv or jsonl"),
    ({"format": "csv", "path": "a", "text": "label"}, r"^data: text \('label'\), label \('label'\) and text_pair"),
    ({"format": "csv", "path": "a", "text_pair": "text"}, r"^data: text \('text'\), label \('label'\) and text_pair"),
    ({"format": "csv", "path": "a\x00b"}, r"^data\.path: expected a path of printable characters"),
    ({"val_size": 0.0}, r"^data\.val_size: expected a fraction in \(0, 1\) or a count >= 1, got float 0\.0"),
    ({"train_size": True}, r"^data\.train_size: expected a fraction in \(0, 1\) or a count >= 1, got bool True"),
])
def test_bad_data_blocks(d, match):
    with pytest.raises(RecipeError, match=match):
        data(**d)


def test_shipped_tweets_recipes_share_model_data_and_training():
    rs = [load_recipe(os.path.join(ROOT, "recipes", f"minilm-tweets-{n}.yaml"))
          for n in ("dense", "2of4-transposable", "4of8-transposable", "2of4-transposable-distill")]
    assert len({(r.model, r.data, r.train) for r in rs}) == 1
    dense, t24, t48, t24d = rs
    # the distilled variant: the same pruning, a dense teacher of the same run (its cache key)
    assert t24d.pruning == t24.pruning and t24.distill is None
    assert (t24d.distill.teacher, t24d.distill.alpha, t24d.distill.temperature) == ("dense", 0.5, 2.0)
    assert not dense.pruning and dense.model.max_length == 64 and dense.data.dataset == "tweets"
    assert t24.pruning[0].pattern.transposable and (t24.pruning[0].pattern.n, t24.pruning[0].pattern.m) == (2, 4)
    # 4:8 one-shot after half an epoch, as on BBC: 12,000 / 16 = 750 steps per epoch
    assert t48.pruning[0].schedule.at_step == 12000 // 16 // 2
