"""``sparse bench optimizer`` (tiny model smoke) and the accuracy runner's summary maths."""
import json
import os

import pytest

from sparse.bench.accuracy import format_table, summarize
from sparse.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_bench_optimizer_tiny(tmp_path, capsys):
    out = tmp_path / "b.json"
    assert main(["bench", "optimizer", "--tiny", "--steps", "4", "--refresh-every", "2", "--full-steps", "1",
                 "--batch", "4", "--seq", "16", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["pruned_layers"] == 12 and r["rounds"] == 4
    for k in ("full_dense_step_s", "dense_opt_step_s", "static_opt_step_s", "refresh_opt_step_mean_s"):
        assert r[k] > 0
    text = capsys.readouterr().out
    assert "static masks" in text and "refresh every 2" in text and "<= 3%" in text


def test_bench_optimizer_bad_pattern(capsys):
    assert main(["bench", "optimizer", "--tiny", "--pattern", "2-4"]) == 2
    assert "--pattern: expected 'n:m'" in capsys.readouterr().err


def test_accuracy_summary_mean_spread_and_gap():
    runs = [{"recipe": "dense", "seed": s, "accuracy": a, "dense": True} for s, a in [(0, 0.97), (1, 0.98), (2, 0.96)]]
    runs += [{"recipe": "2of4", "seed": s, "accuracy": a, "dense": False} for s, a in [(0, 0.96), (1, 0.98), (2, 0.95)]]
    rows = {r["recipe"]: r for r in summarize(runs)}
    assert rows["dense"]["mean"] == pytest.approx(0.97) and rows["dense"]["std"] == pytest.approx(0.01)
    assert rows["2of4"]["gap_points"] == pytest.approx(-2 / 3)
    assert rows["2of4"]["paired_gap_points"] == pytest.approx(-2 / 3)
    assert rows["dense"]["gap_points"] == pytest.approx(0.0)
    table = format_table(list(rows.values()))
    assert "-0.67 pt" in table and "97.00%" in table


def test_accuracy_runner_resume_needs_json(capsys):
    from sparse.bench.accuracy import main as acc_main
    assert acc_main(["--recipes", os.path.join(ROOT, "recipes", "minilm-bbc-dense.yaml"), "--resume"]) == 2
    assert "--resume: needs --json" in capsys.readouterr().err


def test_accuracy_runner_bad_recipe_fails_before_training(tmp_path, capsys):
    from sparse.bench.accuracy import main as acc_main
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\npruning: [{pattern: {type: nm, n: 2, m: 2}}]\n")
    assert acc_main(["--recipes", str(bad)]) == 2
    assert "pattern.n: expected n < m" in capsys.readouterr().err
