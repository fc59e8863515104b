"""``sparse finetune``: a real MiniLM smoke run (2 steps, few documents) and the CLI's error paths."""
import json
import os

import pytest
import torch
import yaml

from sparse.cli import main
from sparse.cli.finetune import default_recipe, resolve_recipe, shipped_recipes
from sparse.recipe import load_recipe

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_FILE = os.path.join(ROOT, "recipes", "minilm-bbc-2of4-transposable.yaml")


def test_default_recipe_is_the_shipped_file():
    assert default_recipe() == load_recipe(DEFAULT_FILE)


def test_shipped_recipes_by_name(tmp_path, monkeypatch):
    folder = os.path.join(ROOT, "recipes")
    names = sorted(f[:-len(".yaml")] for f in os.listdir(folder) if f.endswith(".yaml"))
    assert list(shipped_recipes()) == names
    monkeypatch.chdir(tmp_path)  # names resolve from any folder
    dense = load_recipe(os.path.join(folder, "minilm-bbc-dense.yaml"))
    assert resolve_recipe("minilm-bbc-dense") == dense and resolve_recipe("minilm-bbc-dense.yaml") == dense
    assert resolve_recipe(None) == default_recipe()
    # a file in the current folder wins over a shipped recipe of the same name
    (tmp_path / "minilm-bbc-dense.yaml").write_text("name: mine\n")
    assert resolve_recipe("minilm-bbc-dense.yaml").name == "mine"
    # a path with a folder is a path only
    with pytest.raises(FileNotFoundError, match="recipe file not found: sub/minilm-bbc-dense.yaml"):
        resolve_recipe("sub/minilm-bbc-dense.yaml")


@pytest.mark.parametrize("argv,match", [
    (["--max-steps", "0"], "--max-steps: expected an integer >= 1, got 0"),
    (["--seed", "-1"], "--seed: expected an integer in [0, 4294967295], got -1"),
    (["missing.yaml"], "recipe file not found: missing.yaml (nor is it a shipped recipe: minilm-bbc-2of4, "),
])
def test_bad_arguments_one_line_error(argv, match, capsys):
    assert main(["finetune", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert match in err and len(err.splitlines()) == 1


def test_bad_recipe_one_line_error(tmp_path, capsys):
    p = tmp_path / "bad.yaml"
    p.write_text("name: bad\npruning:\n  - pattern: {type: nm, n: 4, m: 4}\n")
    assert main(["finetune", str(p)]) == 2
    err = capsys.readouterr().err.strip()
    assert "pruning[0].pattern.n: expected n < m" in err and len(err.splitlines()) == 1


def test_finetune_real_minilm_smoke(tmp_path, monkeypatch, capsys):
    """Real pretrained MiniLM + real BBC News, 2 steps on 32 documents: transposable 2:4 after step 1."""
    pytest.importorskip("transformers")
    from safetensors.torch import load_file

    from sparse.finetune import run_key
    from sparse.masks import is_transposable

    monkeypatch.setenv("SPARSE_CACHE_DIR", str(tmp_path / "cache"))
    with open(DEFAULT_FILE, encoding="utf-8") as f:
        d = yaml.safe_load(f)
    d["pruning"][0]["schedule"]["at_step"] = 1
    recipe_path = tmp_path / "r.yaml"
    recipe_path.write_text(yaml.safe_dump(d))
    # a cached dense run with the same settings (as minilm-bbc-dense.yaml would leave behind)
    r = load_recipe(str(recipe_path))
    os.makedirs(tmp_path / "cache")
    (tmp_path / "cache" / f"{run_key(r, 0, 2, 32, 16)}.json").write_text(json.dumps({"accuracy": 0.5}))

    out, js = tmp_path / "run", tmp_path / "r.json"
    argv = ["finetune", str(recipe_path), "--max-steps", "2", "--limit-train", "32", "--limit-test", "16",
            "--out", str(out), "--json", str(js), "--no-progress"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "pruned layers 36/36  valid 36/36" in text
    assert "dense         50.00%" in text and "gap" in text
    res = json.loads(js.read_text())
    # one (partial) epoch: chosen on validation, then the test split evaluated once
    assert res["steps"] == 2 and res["epoch_accuracy"] == [res["val_accuracy"]] and res["best_epoch"] == 1
    assert res["epoch_val_macro_f1"] == [res["val_macro_f1"]] and 0 <= res["macro_f1"] <= 1
    assert res["n_train"] == 32 and res["n_test"] == 16 and res["n_val"] == 16 and res["dense_accuracy"] == 0.5
    assert "validation    accuracy" in text and "test          accuracy" in text and "evaluated once" in text
    masks = load_file(str(out / "masks.safetensors"))
    weights = load_file(str(out / "model.safetensors"))
    assert len(masks) == 36
    for fqn, mask in masks.items():
        assert mask.dtype == torch.bool and is_transposable(mask, 2, 4)
        assert torch.all(weights[fqn][~mask] == 0)
    assert json.loads((out / "result.json").read_text())["recipe_config"]["name"] == "minilm-bbc-2of4-transposable"
    # the run folder is a Hugging Face model folder: it loads with from_pretrained, names its labels,
    # and `sparse convert` takes it as an HF folder
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    loaded = AutoModelForSequenceClassification.from_pretrained(str(out))
    assert set(loaded.config.id2label.values()) == {"business", "entertainment", "politics", "sports", "tech"}
    assert torch.equal(loaded.state_dict()["bert.encoder.layer.0.attention.self.query.weight"],
                       weights["bert.encoder.layer.0.attention.self.query.weight"])
    assert AutoTokenizer.from_pretrained(str(out))("hello")["input_ids"]
    # the reported accuracy is the saved model's on the run's 16 test documents, recomputed here with a
    # plain HF forward (same tokenisation and bf16 autocast as the run), not a number merely in [0, 1]
    from sparse.finetune import load_texts

    texts = load_texts(r, limit_train=32, limit_test=16)
    enc = AutoTokenizer.from_pretrained(str(out))(texts.test_texts, truncation=True, max_length=r.model.max_length,
                                                  padding="max_length", return_tensors="pt")
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        predicted = loaded.eval()(**enc).logits.argmax(-1)
    correct = int((predicted == torch.tensor(texts.test_labels)).sum())
    assert len(texts.test_labels) == 16 and res["accuracy"] == correct / 16
    # never clobber a previous run unless asked
    assert main(argv) == 2
    assert "--overwrite" in capsys.readouterr().err


# ------------------------------------------------------------------ kernel swap and fast dropout (issue 14)
BLOCK90_FILE = os.path.join(ROOT, "recipes", "minilm-bbc-block90.yaml")


def test_block90_recipe_shipped():
    r = load_recipe(BLOCK90_FILE)
    e, = r.pruning
    assert e.kernel == "block-sparse" and e.pattern.block == (32, 32) and e.pattern.sparsity == 0.9
    assert e.schedule.kind == "cubic" and e.final_step == 112 and e.refresh_every == 0
    assert r.train.fast_dropout


def test_block90_smoke_swaps_saves_and_reloads(tmp_path, capsys):
    """The shipped block90 recipe with its gradual schedule cut to steps 0-2: the real MiniLM moves to
    BlockSparseLinear after step 2, trains 2 more steps on the kernels, reports s/step before and after,
    and saves a dense-shaped HF folder that also reloads as the sparse modules."""
    pytest.importorskip("transformers")
    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from sparse.finetune import load_texts
    from sparse.nn import BlockSparseLinear
    from sparse.pruning.kernel_swap import load_block_sparse

    with open(BLOCK90_FILE, encoding="utf-8") as f:
        d = yaml.safe_load(f)
    d["pruning"][0]["schedule"].update(end_step=2, frequency=1)
    recipe_path = tmp_path / "block90.yaml"
    recipe_path.write_text(yaml.safe_dump(d))
    out, js = tmp_path / "run", tmp_path / "r.json"
    argv = ["finetune", str(recipe_path), "--max-steps", "4", "--limit-train", "32", "--limit-test", "16",
            "--out", str(out), "--json", str(js), "--no-progress", "--keep-sparse-modules"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "kernel        block-sparse after step 2: " in text and "s/step after" in text
    assert "pruned layers 36/36  valid 36/36" in text and "sparse_modules.*" in text
    res = json.loads(js.read_text())
    assert res["kernel_step"] == 2
    assert res["seconds_per_step_before_swap"] > 0 and res["seconds_per_step_after_swap"] > 0
    assert all(r["kernel"] == "block-sparse" and r["backend"] for r in res["layers"])
    # dense-shaped HF folder: zeros outside the final block masks
    masks, weights = load_file(str(out / "masks.safetensors")), load_file(str(out / "model.safetensors"))
    assert len(masks) == 36 and not any(k.endswith("weight_data") for k in weights)
    for fqn, mask in masks.items():
        assert weights[fqn].shape == mask.shape and torch.all(weights[fqn][~mask] == 0)
    dense = AutoModelForSequenceClassification.from_pretrained(str(out)).eval()
    sparse_model = load_block_sparse(AutoModelForSequenceClassification.from_pretrained(str(out)), str(out)).eval()
    assert sum(isinstance(m, BlockSparseLinear) for m in sparse_model.modules()) == 36
    r = load_recipe(str(recipe_path))
    texts = load_texts(r, limit_train=32, limit_test=16)
    enc = AutoTokenizer.from_pretrained(str(out))(texts.test_texts, truncation=True, max_length=r.model.max_length,
                                                  padding="max_length", return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(sparse_model(**enc).logits, dense(**enc).logits, rtol=1e-4, atol=1e-4)
        with torch.autocast("cpu", dtype=torch.bfloat16):  # the run evaluated exactly this model
            predicted = sparse_model(**enc).logits.argmax(-1)
    assert res["accuracy"] == int((predicted == torch.tensor(texts.test_labels)).sum()) / 16


def test_no_fast_dropout_flag_reaches_the_recipe(tmp_path, monkeypatch, capsys):
    from sparse import finetune as ft

    seen = []

    def fake(recipe, **kw):
        seen.append((recipe.train.fast_dropout, kw["keep_sparse_modules"]))
        return ft.FinetuneResult(recipe=recipe.name, seed=0, steps=1, epochs_run=1.0, accuracy=0.5,
                                 epoch_accuracy=[0.5], dense_accuracy=None, seconds=1.0, seconds_per_step=1.0,
                                 n_train=1, n_test=1)

    monkeypatch.setattr(ft, "finetune", fake)
    monkeypatch.setattr(ft, "resolve_teacher", lambda recipe, **kw: None)
    for extra, expected in (([], (True, False)), (["--no-fast-dropout", "--keep-sparse-modules"], (False, True))):
        assert main(["finetune", "minilm-bbc-dense", "--out", str(tmp_path / f"run{len(seen)}"), *extra]) == 0
        assert seen[-1] == expected
    capsys.readouterr()


@pytest.mark.parametrize("fast", [True, False])
def test_use_dropout_follows_train_fast_dropout(fast):
    import dataclasses

    from sparse.finetune import use_dropout
    from sparse.nn.dropout import Dropout
    from testkit import make_tiny_bert

    model = make_tiny_bert(dropout=0.1)
    r = load_recipe(os.path.join(ROOT, "recipes", "minilm-bbc-dense.yaml"))
    use_dropout(model, r.replace(train=dataclasses.replace(r.train, fast_dropout=fast)))
    kinds = {type(m) for m in model.modules() if isinstance(m, torch.nn.Dropout)}
    assert kinds == ({Dropout} if fast else {torch.nn.Dropout})


def test_swap_timing_phases():
    from sparse.finetune import swap_timing

    # steps 1-3 before (the first one left out), 4-6 after (the first one after the swap left out)
    assert swap_timing([9.0, 2.0, 2.0, 7.0, 1.0, 1.0], 3) == (2.0, 1.0)
    assert swap_timing([1.0, 1.0], None) == (None, None)
    assert swap_timing([3.0, 1.0], 0) == (None, 1.0)


def test_summary_of_an_mlpruning_run_reports_what_the_pruner_kept():
    from types import SimpleNamespace

    from sparse.cli.finetune import summary

    res = SimpleNamespace(layers=[], recipe="mlp", seed=0, steps=3, epochs_run=0.1, seconds_per_step=1.0,
                          accuracy=0.9, epoch_accuracy=[0.9], n_test=10, dense_accuracy=None, kernel_step=None,
                          notes=[], extra={"mlpruning": {"remaining_fraction": 0.512, "target": 0.5,
                                                         "packed_accuracy": 0.875}})
    text = summary(res, SimpleNamespace(pruning=()), "/tmp/x")
    assert "51.2% of the encoder's Linear weights remain (target 50%); packed model 87.50%" in text
    assert "pruned layers" not in text
