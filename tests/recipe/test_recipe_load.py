"""Recipe schema: shipped recipes load; strict errors name the key, the allowed values and the value."""
import glob
import os
import re

import pytest
import yaml

import sparse
from sparse.finetune import baseline_recipe
from sparse.recipe import Recipe, RecipeError, load_recipe

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHIPPED = ["minilm-bbc-dense", "minilm-bbc-2of4", "minilm-bbc-2of4-transposable", "minilm-bbc-4of8-transposable",
           "minilm-bbc-gradual-80", "minilm-bbc-srste-2of4", "minilm-bbc-magnitude-2of4-transposable"]

NM = {"type": "nm", "n": 2, "m": 4}


def one(**entry):
    return {"name": "t", "pruning": [{"pattern": NM, **entry}]}


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_recipes_load(name):
    r = sparse.load_recipe(os.path.join(ROOT, "recipes", f"{name}.yaml"))
    assert isinstance(r, Recipe) and r.name == name
    assert r.model.source == "minilm" and r.data.dataset == "bbc_news"
    assert (len(r.pruning) == 0) == (name == "minilm-bbc-dense")


def test_shipped_recipes_share_training_settings():
    # same seed, split and steps: the accuracy comparison (and the dense cache) depends on it
    # (with distill.teacher_train, the dense baseline's: minilm-bbc-block90 trains at 10x its lr)
    rs = [load_recipe(p) for p in sorted(glob.glob(os.path.join(ROOT, "recipes", "minilm-bbc-*.yaml")))]
    assert len({(r.model, r.data, baseline_recipe(r).train) for r in rs}) == 1
    assert len({r.pruning_fingerprint() for r in rs}) == len(rs)


def test_shipped_details():
    r = load_recipe(os.path.join(ROOT, "recipes", "minilm-bbc-2of4-transposable.yaml"))
    e = r.pruning[0]
    assert (e.pattern.n, e.pattern.m, e.pattern.transposable, e.pattern.solver) == (2, 4, True, "exact")
    assert e.refresh_every == 8 and e.schedule.kind == "oneshot" and e.schedule.at_step == 0
    assert e.method.kind == "srste" and e.method.lam == pytest.approx(2e-4)
    b = load_recipe(os.path.join(ROOT, "recipes", "minilm-bbc-magnitude-2of4-transposable.yaml")).pruning[0]
    assert b.method.kind == "magnitude" and b.schedule.at_step == 56 and b.pattern == e.pattern
    g = load_recipe(os.path.join(ROOT, "recipes", "minilm-bbc-gradual-80.yaml")).pruning[0]
    assert g.pattern.kind == "unstructured" and g.pattern.sparsity == 0.8 and g.schedule.kind == "cubic"
    s = load_recipe(os.path.join(ROOT, "recipes", "minilm-bbc-srste-2of4.yaml")).pruning[0]
    assert s.method.kind == "srste" and s.method.lam == pytest.approx(2e-4)


def test_defaults_and_error_type():
    r = load_recipe(one())
    e = r.pruning[0]
    assert issubclass(RecipeError, ValueError)
    assert e.targets.types == ("Linear",) and e.method.kind == "magnitude" and e.schedule.at_step == 0
    assert any("classifier" in x for x in e.targets.exclude)
    assert load_recipe(r) is r


@pytest.mark.parametrize("data,match", [
    ({"name": "t", "prunning": []}, r"recipe\.prunning: unknown key; allowed keys: name, description, model"),
    (one(patern=NM), r"pruning\[0\]\.patern: unknown key"),
    ({"name": "t", "pruning": [{"pattern": {**NM, "k": 1}}]}, r"pruning\[0\]\.pattern\.k: unknown key; allowed keys: type, n, m"),
    ({"name": "t", "train": {"learning_rate": 1}}, r"train\.learning_rate: unknown key; allowed keys: epochs"),
    (one(targets={"regex": "x"}), r"targets\.regex: unknown key"),
])
def test_unknown_keys(data, match):
    with pytest.raises(RecipeError, match=match):
        load_recipe(data)


@pytest.mark.parametrize("entry,match", [
    ({"pattern": {"type": "nm", "n": 4, "m": 4}}, r"pattern\.n: expected n < m .*got n=4, m=4"),
    ({"pattern": {"type": "nm", "n": 5, "m": 4}}, r"pattern\.n: expected n < m"),
    ({"pattern": {"type": "nm", "n": 2, "m": 64}}, r"pattern\.m: expected an integer in \[2, 32\], got 64"),
    ({"pattern": {"type": "nm", "n": "2", "m": 4}}, r"pattern\.n: expected an integer, got str"),
    ({"pattern": {"type": "2:4"}}, r"pattern\.type: expected one of unstructured, nm, block, got '2:4'"),
    ({"pattern": {"type": "unstructured", "sparsity": 1.0}}, r"pattern\.sparsity: expected a number in \[0.0, 1.0\)"),
    ({"pattern": {"type": "block", "sparsity": 0.5, "block": [4]}}, r"pattern\.block: expected \[rows, cols\]"),
    ({"pattern": NM, "pattern_x": 1}, r"pattern_x: unknown key"),
    ({"pattern": NM, "method": {"type": "sr-ste"}}, r"method\.type: expected one of magnitude, srste, got 'sr-ste'"),
    ({"pattern": NM, "method": {"type": "magnitude", "lambda": 1}}, r"method\.lambda: only allowed with type srste"),
    ({"pattern": NM, "schedule": {"type": "cubic", "end_step": 5}}, r"schedule\.type: 'cubic' needs a sparsity pattern"),
    ({"pattern": {"type": "unstructured", "sparsity": 0.5}, "schedule": {"type": "cubic", "start_step": 5, "end_step": 5}},
     r"schedule\.end_step: expected end_step > start_step \(5\), got 5"),
    ({"pattern": NM, "schedule": {"type": "oneshot", "at_step": -1}}, r"schedule\.at_step: expected an integer >= 0"),
    ({"pattern": NM, "targets": {"types": ["Embedding"]}}, r"targets\.types: expected one of Linear, Conv1d, Conv2d, got 'Embedding'"),
    ({"pattern": NM, "targets": {"include": ["("]}}, r"targets\.include\[0\]: invalid regex '\('"),
    ({"pattern": NM, "targets": {"on_indivisible": "pad"}}, r"on_indivisible: expected one of error, skip, got 'pad'"),
    ({"pattern": NM, "refresh_every": -1}, r"refresh_every: expected an integer >= 0, got -1"),
    ({"pattern": NM, "refresh_every": True}, r"refresh_every: expected an integer, got bool"),
])
def test_bad_values(entry, match):
    with pytest.raises(RecipeError, match=match):
        load_recipe({"name": "t", "pruning": [entry]})


def test_bad_top_level_values():
    with pytest.raises(RecipeError, match=r"train\.lr: expected a number in \(0.0, inf\], got -1"):
        load_recipe({"name": "t", "train": {"lr": -1}})
    with pytest.raises(RecipeError, match=r"data\.dataset: expected one of bbc_news, tweets, got 'imdb'"):
        load_recipe({"name": "t", "data": {"dataset": "imdb"}})
    with pytest.raises(RecipeError, match=r"model\.source: expected one of minilm or a path"):
        load_recipe({"name": "t", "model": {"source": "bert-base"}})
    with pytest.raises(RecipeError, match=r"unique entry names"):
        load_recipe({"name": "t", "pruning": [{"name": "a", "pattern": NM}, {"name": "a", "pattern": NM}]})
    with pytest.raises(RecipeError, match=r"path_or_dict: expected a YAML path"):
        load_recipe(42)


def test_yaml_file_errors_and_numeric_strings(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("name: t\ntrain: {lr: 5e-5}\npruning:\n  - pattern: {type: nm, n: 2, m: 4}\n")
    assert load_recipe(p).train.lr == pytest.approx(5e-5)  # YAML 1.1 reads 5e-5 as a string
    p.write_text("name: t\npruning:\n  - pattern: {type: nm, n: 2, m: 4, transposible: true}\n")
    with pytest.raises(RecipeError, match=r"r\.yaml: pruning\[0\]\.pattern\.transposible: unknown key"):
        load_recipe(p)
    p.write_text("")
    with pytest.raises(RecipeError, match="empty recipe"):
        load_recipe(p)
    p.write_text("name: [unclosed\n")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(p)
    with pytest.raises(FileNotFoundError):
        load_recipe(tmp_path / "missing.yaml")


def test_unsafe_yaml_is_rejected(tmp_path):
    p = tmp_path / "evil.yaml"
    p.write_text("name: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(p)


def test_fingerprint_depends_on_pruning_only():
    a = load_recipe(one())
    b = load_recipe({**one(), "train": {"lr": 1e-3}, "name": "other"})
    c = load_recipe({"name": "t", "pruning": [{"pattern": {"type": "nm", "n": 1, "m": 4}}]})
    assert a.pruning_fingerprint() == b.pruning_fingerprint() != c.pruning_fingerprint()
    assert yaml.safe_dump(a.to_dict())  # plain data


def test_defaults_come_from_the_dataclass_fields():
    from sparse.recipe import (DataConfig, DistillConfig, Method, ModelConfig, Schedule, Targets, TrainConfig)

    r = load_recipe({"name": "t", "distill": {}, "pruning": [{"pattern": NM, "method": "srste"},
                                                             {"name": "b", "pattern": NM}]})
    assert (r.model, r.data, r.train, r.distill) == (ModelConfig(), DataConfig(), TrainConfig(), DistillConfig())
    e, b = r.pruning
    assert e.name == "pruning[0]" and b.name == "b"
    assert e.targets == Targets() and e.schedule == Schedule() and e.refresh_every == 0
    assert e.method == Method("srste") and e.method.lam == Method.lam and b.method == Method()
    assert load_recipe({"name": "t", "distill": None}).distill is None
    assert load_recipe({}).name == "recipe" and load_recipe({"train": {"epochs": 7}}).train == TrainConfig(epochs=7)
    cubic = load_recipe({"name": "t", "pruning": [{"pattern": {"type": "unstructured", "sparsity": 0.5},
                                                   "schedule": {"type": "cubic", "end_step": 9}}]})
    assert cubic.pruning[0].schedule == Schedule("cubic", end_step=9)


def test_default_targets_follow_the_layer_policy():
    from sparse.policy import HEAD_REGEX
    from sparse.recipe import DEFAULT_EXCLUDE, Targets

    assert DEFAULT_EXCLUDE == (HEAD_REGEX,) and Targets().exclude == DEFAULT_EXCLUDE
    rx = [re.compile(r) for r in load_recipe(one()).pruning[0].targets.exclude]
    for name in ("cls.predictions.transform.dense", "lm_head", "classifier", "bert.pooler.dense"):
        assert any(r.search(name) for r in rx), name
    assert not any(r.search("bert.encoder.layer.0.intermediate.dense") for r in rx)
