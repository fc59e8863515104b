"""``sparse bench accuracy``: the summary over seeds reports validation and test figures and ranks recipes by
validation macro-F1 (synthetic runs: no training here)."""
import json

import pytest

from sparse.bench.accuracy import format_table, summarize


def run(recipe, seed, acc, f1=None, val_acc=None, val_f1=None, dense=False, **extra):
    r = {"recipe": recipe, "seed": seed, "accuracy": acc, "dense": dense, "extra": extra}
    if f1 is not None:
        r.update(macro_f1=f1, val_accuracy=val_acc, val_macro_f1=val_f1)
    return r


RUNS = [
    run("dense", 0, 0.80, 0.78, 0.81, 0.79, dense=True), run("dense", 1, 0.82, 0.80, 0.83, 0.81, dense=True),
    # better on test but worse on validation than t48: ranked by validation, never by test
    run("t24", 0, 0.84, 0.83, 0.70, 0.69), run("t24", 1, 0.84, 0.83, 0.72, 0.71),
    run("t48", 0, 0.79, 0.77, 0.80, 0.78), run("t48", 1, 0.81, 0.79, 0.82, 0.80),
]


def test_rows_are_ranked_by_validation_macro_f1_with_gaps_to_dense():
    rows = summarize(RUNS)
    assert [(r["recipe"], r["rank"]) for r in rows] == [("dense", 1), ("t48", 2), ("t24", 3)]
    t24 = rows[2]
    assert t24["mean"] == pytest.approx(0.84) and t24["macro_f1"] == pytest.approx(0.83)
    assert t24["val_accuracy"] == pytest.approx(0.71) and t24["val_macro_f1"] == pytest.approx(0.70)
    assert t24["val_macro_f1_std"] == pytest.approx(0.0141421, abs=1e-6)
    assert t24["gap_points"] == pytest.approx(3.0) and t24["f1_gap_points"] == pytest.approx(4.0)
    assert t24["val_f1_gap_points"] == pytest.approx(-10.0)
    table = format_table(rows)
    for header in ("rank", "val F1", "val acc", "test acc", "test F1", "acc vs dense", "F1 vs dense"):
        assert header in table
    assert "70.00%" in table and "+4.00 pt" in table


def test_runs_without_validation_and_one_shot_rows_come_last_unranked():
    old = [run("old", 0, 0.9), run("dense", 0, 0.8, 0.78, 0.81, 0.79, dense=True, **{"oneshot:t24": 0.5})]
    rows = summarize(old)
    assert [(r["recipe"], r["rank"]) for r in rows] == [("dense", 1), ("old", None),
                                                        ("t24 (one-shot, no retrain)", None)]
    assert rows[1]["macro_f1"] is None and rows[1]["f1_gap_points"] is None
    assert "-" in format_table(rows)


def test_mlpruning_rows_keep_encoder_kept():
    rows = summarize([run("mlp", 0, 0.9, 0.9, 0.9, 0.9, mlpruning={"remaining_fraction": 0.3})])
    assert rows[0]["encoder_kept"] == pytest.approx(0.3)


def test_merge_prints_the_ranked_table(tmp_path, capsys):
    from sparse.cli import main

    (tmp_path / "a.json").write_text(json.dumps({"runs": RUNS[:4]}))
    (tmp_path / "b.json").write_text(json.dumps({"runs": RUNS[4:]}))
    out = tmp_path / "m.json"
    assert main(["bench", "accuracy", "--merge", str(tmp_path / "a.json"), str(tmp_path / "b.json"),
                 "--json", str(out)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[1] for line in lines[2:]] == ["dense", "t48", "t24"]
    assert [r["rank"] for r in json.loads(out.read_text())["summary"]] == [1, 2, 3]


def test_dense_recipes_of_a_seed_run_first(tmp_path, monkeypatch):
    """A distilling recipe listed before the dense one (as recipes/minilm-tweets-*.yaml sorts) finds the
    dense run already done: one dense training per seed, not two."""
    import argparse

    import sparse.finetune as ft
    from sparse.bench import accuracy

    order = []

    def fake_teacher(recipe, **kw):
        order.append(("teacher", recipe.name, kw["seed"]))
        return None

    def fake_finetune(recipe, **kw):
        order.append(("run", recipe.name, kw["seed"]))
        return ft.FinetuneResult(recipe=recipe.name, seed=kw["seed"], steps=1, epochs_run=1.0, accuracy=0.5,
                                 epoch_accuracy=[0.5], dense_accuracy=None, seconds=1.0, seconds_per_step=1.0,
                                 n_train=1, n_test=1, macro_f1=0.5, val_accuracy=0.5, val_macro_f1=0.5,
                                 epoch_val_macro_f1=[0.5], best_epoch=1)

    monkeypatch.setattr(ft, "resolve_teacher", fake_teacher)
    monkeypatch.setattr(ft, "finetune", fake_finetune)
    base = "model: {source: minilm}\ndata: {dataset: bbc_news}\n"
    paths = []
    for name, extra in (("a-distill", "distill: {teacher: dense}\npruning: []\n"), ("b-sparse", ""),
                        ("z-dense", "pruning: []\n")):
        body = extra if extra else ("pruning:\n  - name: e\n    targets: {types: [Linear]}\n"
                                    "    pattern: {type: nm, n: 2, m: 4}\n")
        (tmp_path / f"{name}.yaml").write_text(f"name: {name}\n{base}{body}")
        paths.append(str(tmp_path / f"{name}.yaml"))
    parser = argparse.ArgumentParser()
    accuracy.add_arguments(parser)
    args = parser.parse_args(["--recipes", *paths, "--seeds", "0", "1", "--no-progress"])
    accuracy.run(args)
    runs = [(name, seed) for kind, name, seed in order if kind == "run"]
    assert runs == [("z-dense", 0), ("a-distill", 0), ("b-sparse", 0), ("z-dense", 1), ("a-distill", 1),
                    ("b-sparse", 1)]
