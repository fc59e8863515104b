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
    with pytest.raises(FileNotFoundError, match="recipe: file not found: sub/minilm-bbc-dense.yaml"):
        resolve_recipe("sub/minilm-bbc-dense.yaml")


@pytest.mark.parametrize("argv,match", [
    (["--max-steps", "0"], "--max-steps: expected an integer >= 1, got 0"),
    (["--seed", "-1"], "--seed: expected an integer in [0, 4294967295], got -1"),
    (["missing.yaml"], "recipe: file not found: missing.yaml (nor is it a shipped recipe: minilm-bbc-2of4, "),
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
    assert e.schedule.kind == "cubic" and e.final_step == 101 and e.refresh_every == 0
    assert r.train.fast_dropout
    # distilled at 10x the dense lr from the dense baseline itself: its teacher is minilm-bbc-dense's run
    dense = load_recipe(os.path.join(ROOT, "recipes", "minilm-bbc-dense.yaml"))
    assert r.distill.teacher == "dense" and r.train.lr == 10 * dense.train.lr
    teacher = r.replace(train=r.distill.teacher_recipe_train(r.train), pruning=(), distill=None)
    assert teacher.train == dense.train and teacher.model == dense.model and teacher.data == dense.data


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
    del d["distill"]  # the swap is under test here; distillation has its own tests
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


# ------------------------------------------------- your own data, three splits, epoch chosen on validation (issue 16)
def _tiny_folder(tmp_path, save_tiny_bert):
    """A 1-layer BERT (hidden 32) with MiniLM's tokenizer: fine-tunes in well under a second per epoch."""
    import transformers

    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=64)
    return save_tiny_bert(transformers.BertModel(cfg), str(tmp_path / "tiny"))


WORDS = {"happy": "great lovely good", "sad": "awful bad terrible", "meh": "fine okay whatever"}


def _write_pairs(path, n, seed):
    import random

    rnd = random.Random(seed)
    lines = ["sentence,context,mood"]
    for i in range(n):
        mood = list(WORDS)[i % 3]
        lines.append(f"{rnd.choice(WORDS[mood].split())} thing {i},about {rnd.randint(0, 9)},{mood}")
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _tiny_recipe(tmp_path, save_tiny_bert, **extra):
    d = {"name": "tiny-pairs", "model": {"source": _tiny_folder(tmp_path, save_tiny_bert), "max_length": 16},
         "data": {"format": "csv", "path": _write_pairs(tmp_path / "train.csv", 48, 0),
                  "val_path": _write_pairs(tmp_path / "val.csv", 6, 1),
                  "test_path": _write_pairs(tmp_path / "test.csv", 9, 2),
                  "text": "sentence", "text_pair": "context", "label": "mood"},
         "train": {"epochs": 3, "batch_size": 8, "lr": 1e-3, "head_lr": 1e-2, "eval_batch_size": 4}, **extra}
    p = tmp_path / "tiny.yaml"
    p.write_text(yaml.safe_dump(d))
    return p


def test_csv_pairs_run_chooses_on_validation_tests_once_and_names_labels(tmp_path, monkeypatch, capsys, save_tiny_bert):
    """A tiny BERT on a sentence-pair CSV with its own validation and test files, through the CLI."""
    pytest.importorskip("transformers")
    from sparse import finetune as ft

    monkeypatch.setenv("SPARSE_CACHE_DIR", str(tmp_path / "cache"))
    seen = []
    real = ft.score_split
    monkeypatch.setattr(ft, "score_split", lambda m, split, r: seen.append(len(split)) or real(m, split, r))
    recipe_path = _tiny_recipe(tmp_path, save_tiny_bert)
    out, js = tmp_path / "run", tmp_path / "r.json"
    assert main(["finetune", str(recipe_path), "--out", str(out), "--json", str(js), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert seen == [6, 6, 6, 9]  # validation after each of 3 epochs, the test split once at the end
    res = json.loads(js.read_text())
    assert (res["n_train"], res["n_val"], res["n_test"], res["steps"]) == (48, 6, 9, 18)
    f1 = res["epoch_val_macro_f1"]
    assert res["best_epoch"] == f1.index(max(f1)) + 1 and res["val_macro_f1"] == max(f1)
    assert res["val_accuracy"] == res["epoch_accuracy"][res["best_epoch"] - 1]
    assert res["label_names"] == ["happy", "meh", "sad"]
    assert f"epoch {res['best_epoch']} of 3 chosen on validation macro-F1" in text and "evaluated once" in text
    # the saved folder names its labels, and its scores are the reported ones (pairs with token types)
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from sparse.data import load_splits

    model = AutoModelForSequenceClassification.from_pretrained(str(out)).eval()
    assert model.config.id2label == {0: "happy", 1: "meh", 2: "sad"} and model.config.label2id["sad"] == 2
    r = load_recipe(str(recipe_path))
    d = load_splits(r.data)
    split = ft.tokenize(AutoTokenizer.from_pretrained(str(out)), d.val_texts, d.val_labels, 16, d.val_pairs)
    assert split.token_type_ids is not None and int(split.token_type_ids.sum()) > 0
    assert real(model, split, r) == {"accuracy": res["val_accuracy"], "macro_f1": res["val_macro_f1"]}


def test_the_best_validation_epoch_is_restored_masks_and_all(tmp_path, monkeypatch, save_tiny_bert):
    """Scripted validation scores make epoch 2 the best of 3: the run ends with (and saves) epoch 2's
    model, a transposable 2:4 one whose masks SR-STE kept refreshing after it."""
    pytest.importorskip("transformers")
    from safetensors.torch import load_file

    from sparse import finetune as ft
    from sparse.masks import is_transposable

    entry = {"name": "t24", "pattern": {"type": "nm", "n": 2, "m": 4, "transposable": True, "solver": "exact"},
             "targets": {"include": [r"encoder\.layer\.\d+\."]}, "method": {"type": "srste", "lambda": 2e-4},
             "schedule": {"type": "oneshot", "at_step": 0}, "refresh_every": 2}
    recipe_path = _tiny_recipe(tmp_path, save_tiny_bert, pruning=[entry])
    states, scripted = [], iter([0.5, 0.9, 0.7])
    real = ft.score_split

    def fake(model, split, recipe):
        if len(split) != 6:
            return real(model, split, recipe)
        states.append({k: v.clone() for k, v in model.state_dict().items()})
        f1 = next(scripted)
        return {"accuracy": f1, "macro_f1": f1}

    monkeypatch.setattr(ft, "score_split", fake)
    res = ft.finetune(str(recipe_path), out_dir=str(tmp_path / "run"), progress=False, use_cache=False)
    assert res.best_epoch == 2 and res.val_macro_f1 == 0.9 and res.epoch_val_macro_f1 == [0.5, 0.9, 0.7]
    saved = load_file(str(tmp_path / "run" / "model.safetensors"))
    masks = load_file(str(tmp_path / "run" / "masks.safetensors"))
    q = "bert.encoder.layer.0.attention.self.query.weight"
    assert torch.equal(saved[q], states[1][q]) and not torch.equal(saved[q], states[2][q])
    for fqn, mask in masks.items():
        assert is_transposable(mask, 2, 4) and torch.all(saved[fqn][~mask] == 0)
    assert all(r["valid"] for r in res.layers)


def test_eligible_epochs_wait_for_final_masks():
    from sparse.finetune import eligible_epoch, final_mask_step

    cubic = load_recipe({"name": "c", "pruning": [{"name": "g", "pattern": {"type": "unstructured", "sparsity": 0.5},
                                                   "schedule": {"type": "cubic", "start_step": 0, "end_step": 10,
                                                                "frequency": 2}}]})
    assert final_mask_step(cubic) == 10
    assert [eligible_epoch(cubic, s, 30) for s in (8, 10, 20, 30)] == [False, True, True, True]
    dense = load_recipe({"name": "d"})
    assert eligible_epoch(dense, 1, 30)
    mlp = load_recipe(os.path.join(ROOT, "recipes", "mlpruning-minilm-bbc.yaml"))
    assert not eligible_epoch(mlp, 29, 30) and eligible_epoch(mlp, 30, 30)


def test_metrics_match_scikit_learn():
    from sklearn.metrics import accuracy_score, f1_score

    from sparse.finetune import metrics

    g = torch.Generator().manual_seed(0)
    for n, k in ((50, 3), (7, 5), (1, 2)):
        y, p = torch.randint(0, k, (n,), generator=g), torch.randint(0, k, (n,), generator=g)
        m = metrics(p, y)
        assert m["accuracy"] == pytest.approx(accuracy_score(y, p))
        assert m["macro_f1"] == pytest.approx(f1_score(y, p, average="macro"))
    assert metrics(torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)) == {"accuracy": 0.0,
                                                                                           "macro_f1": 0.0}


def test_cache_key_follows_the_data(tmp_path):
    from sparse.finetune import data_fingerprint, load_texts, plan_run

    def key(content, **data):
        (tmp_path / "d.csv").write_text("text,label\n" + content)
        r = load_recipe({"name": "k", "data": {"format": "csv", "path": str(tmp_path / "d.csv"), **data}})
        t = load_texts(r)
        return plan_run(r, len(t.train_labels), len(t.test_labels), None, data_fingerprint(r, t)).key

    rows = "".join(f"t{i},{'ab'[i % 2]}\n" for i in range(20))
    base = key(rows)
    assert key(rows) == base
    assert key(rows.replace("t3,", "T3,")) != base        # the same path, edited
    assert key(rows, val_size=0.2) != base and key(rows, split_seed=1) != base
    assert data_fingerprint(load_recipe({"name": "b"}), None) is None  # packaged data: settings only


def test_bad_data_is_a_one_line_error_before_training(tmp_path, capsys, save_tiny_bert):
    pytest.importorskip("transformers")
    recipe_path = _tiny_recipe(tmp_path, save_tiny_bert)
    (tmp_path / "test.csv").write_text("sentence,context,mood\nx,y,happy\nz,w,furious\n")
    capsys.readouterr()  # the tiny model's save_pretrained progress bar
    assert main(["finetune", str(recipe_path), "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "test.csv line 3: column data.label: label 'furious' is not in the " \
                                           "training split" in err
    assert not os.path.exists(tmp_path / "run" / "model.safetensors")
