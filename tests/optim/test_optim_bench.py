"""``sparse bench optimizer`` (tiny model smoke) and the accuracy runner's summary maths."""
import copy
import json
import os
import re

import pytest
import torch

from sparse.bench.accuracy import format_table, summarize
from sparse.cli import main
from sparse.masks import transposable_mask

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_bench_optimizer_tiny(tmp_path, capsys):
    out = tmp_path / "b.json"
    assert main(["bench", "optimizer", "--tiny", "--steps", "4", "--refresh-every", "2", "--full-steps", "1",
                 "--batch", "4", "--seq", "16", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["pruned_layers"] == 12 and r["rounds"] == 4
    # the reported overheads are the ones the recorded times give (medians of the same rounds)
    full = r["full_dense_step_s"]
    assert r["static_overhead_pct"] == pytest.approx(100 * (r["static_opt_step_s"] - r["dense_opt_step_s"]) / full)
    assert r["static_wrapper_pct"] == pytest.approx(100 * r["static_wrapper_s"] / full)
    assert r["refresh_wrapper_amortised_pct"] == pytest.approx(100 * r["refresh_wrapper_mean_s"] / full)
    assert full > r["dense_opt_step_s"]          # fwd + bwd + the optimizer step contains the step
    text = capsys.readouterr().out
    assert "static masks" in text and "refresh every 2" in text and "<= 3%" in text
    assert r["method"] == "magnitude"
    assert main(["bench", "optimizer", "--tiny", "--steps", "2", "--refresh-every", "2", "--full-steps", "1",
                 "--batch", "2", "--seq", "8", "--method", "srste", "--json", str(tmp_path / "s.json")]) == 0
    assert json.loads((tmp_path / "s.json").read_text())["method"] == "srste"


def test_bench_optimizer_bad_pattern(capsys):
    assert main(["bench", "optimizer", "--tiny", "--pattern", "2-4"]) == 2
    assert "--pattern: expected N:M (or N:MT for transposable)" in capsys.readouterr().err


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
    dense = os.path.join(ROOT, "recipes", "minilm-bbc-dense.yaml")
    assert main(["bench", "accuracy", "--recipes", dense, "--resume"]) == 2
    assert "--resume: needs --json" in capsys.readouterr().err


def test_accuracy_resume_extends_its_own_json_without_force(tmp_path, capsys):
    """--resume reads the existing --json (no --force needed) and skips the runs it already holds."""
    dense = os.path.join(ROOT, "recipes", "minilm-bbc-dense.yaml")
    out = tmp_path / "runs.json"
    out.write_text(json.dumps({"runs": [{"recipe": "minilm-bbc-dense", "seed": 0, "accuracy": 0.9, "dense": True}]}))
    assert main(["bench", "accuracy", "--recipes", dense, "--seeds", "0", "--resume", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "minilm-bbc-dense" in text and "90.00%" in text                 # the stored run, summarised
    assert len(json.loads(out.read_text())["runs"]) == 1                  # nothing re-trained


def test_accuracy_runner_bad_recipe_fails_before_training(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\npruning: [{pattern: {type: nm, n: 2, m: 2}}]\n")
    assert main(["bench", "accuracy", "--recipes", str(bad)]) == 2
    assert "pattern.n: expected n < m" in capsys.readouterr().err


def test_accuracy_summary_lists_oneshot_baselines():
    runs = [{"recipe": "dense", "seed": s, "accuracy": 0.97, "dense": True,
             "extra": {"oneshot:2of4T": a}} for s, a in [(0, 0.88), (1, 0.90)]]
    rows = {r["recipe"]: r for r in summarize(runs)}
    row = rows["2of4T (one-shot, no retrain)"]
    assert row["n"] == 2 and row["mean"] == pytest.approx(0.89) and row["gap_points"] == pytest.approx(-8.0)


def test_oneshot_after_hook_prunes_a_copy_of_the_real_dense_model(tmp_path, monkeypatch):
    """Real MiniLM + BBC News, 1 dense step: the hook evaluates a one-shot 2:4-transposable copy."""
    pytest.importorskip("transformers")
    from sparse.bench.accuracy import oneshot_after
    from sparse.finetune import finetune
    from sparse.recipe import load_recipe

    monkeypatch.setenv("SPARSE_CACHE_DIR", str(tmp_path / "cache"))
    seen = {}
    hook = oneshot_after([load_recipe(os.path.join(ROOT, "recipes", "minilm-bbc-2of4-transposable.yaml"))])

    def after(model, test_accuracy):
        out = hook(model, test_accuracy)
        seen["dense_zeros"] = sum(int((p == 0).sum()) for n, p in model.named_parameters() if "encoder" in n)
        seen["dense_acc"] = test_accuracy(model)
        pruned = copy.deepcopy(model)
        with torch.no_grad():
            for name, mod in pruned.named_modules():
                if re.search(r"encoder\.layer\.\d+\.", name) and isinstance(mod, torch.nn.Linear):
                    mod.weight.mul_(transposable_mask(mod.weight.float(), 2, 4, method="exact"))
        seen["own_oneshot_acc"] = test_accuracy(pruned)
        return out

    res = finetune(os.path.join(ROOT, "recipes", "minilm-bbc-dense.yaml"), max_steps=1, limit_train=16,
                   limit_test=24, progress=False, after=after)
    acc = res.extra["oneshot:minilm-bbc-2of4-transposable"]
    assert acc == seen["own_oneshot_acc"]        # = our own one-shot prune of the same model, evaluated
    assert seen["dense_zeros"] < 1000            # the trained model itself was not pruned
    assert seen["dense_acc"] == res.accuracy     # and evaluates as the run did
    d = res.to_dict()
    assert json.loads(json.dumps(d))["extra"] == d["extra"]    # extra round-trips through JSON


def test_accuracy_runner_oneshot_needs_pruning_entries(capsys):
    dense = os.path.join(ROOT, "recipes", "minilm-bbc-dense.yaml")
    assert main(["bench", "accuracy", "--recipes", dense, "--oneshot-from", dense]) == 2
    assert "--oneshot-from: recipe 'minilm-bbc-dense' has no pruning entries" in capsys.readouterr().err


def test_accuracy_merge_combines_files_and_rejects_duplicates(tmp_path, capsys):
    a, b, out = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "all.json"
    a.write_text(json.dumps({"runs": [{"recipe": "dense", "seed": 0, "accuracy": 0.98, "dense": True},
                                      {"recipe": "2of4", "seed": 0, "accuracy": 0.97, "dense": False}]}))
    b.write_text(json.dumps({"runs": [{"recipe": "dense", "seed": 1, "accuracy": 0.96, "dense": True},
                                      {"recipe": "2of4", "seed": 1, "accuracy": 0.97, "dense": False}]}))
    assert main(["bench", "accuracy", "--merge", str(a), str(b), "--json", str(out)]) == 0
    rows = {r["recipe"]: r for r in json.loads(out.read_text())["summary"]}
    assert rows["dense"]["n"] == 2 and rows["dense"]["mean"] == pytest.approx(0.97)
    assert rows["2of4"]["gap_points"] == pytest.approx(0.0) and rows["2of4"]["paired_gap_points"] == pytest.approx(0.0)
    assert "2of4" in capsys.readouterr().out
    assert main(["bench", "accuracy", "--merge", str(a), "--json", str(out)]) == 2   # exists, no --force
    assert f"--json: {out} exists; pass --force" in capsys.readouterr().err
    assert main(["bench", "accuracy", "--merge", str(a), "--json", str(out), "--force"]) == 0
    assert [r["seed"] for r in json.loads(out.read_text())["runs"]] == [0, 0]
    assert main(["bench", "accuracy", "--merge", str(a), str(a)]) == 2
    assert "appear more than once: [('2of4', 0), ('dense', 0)]" in capsys.readouterr().err
    assert main(["bench", "accuracy"]) == 2
    assert "--recipes: expected recipe YAML files" in capsys.readouterr().err
