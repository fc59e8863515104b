"""``sparse.finetune`` steps: the head learning rate from the layer policy, and knowledge distillation
(the recipe block, the loss, the dense teacher resolved by the caller: trained once, cached, reused) on
the real MiniLM with a few documents."""
import logging
import os

import pytest
import torch
import yaml

from sparse.finetune import distill_loss, finetune, param_groups, resolve_teacher, run_key, teacher_dir
from sparse.recipe import DistillConfig, RecipeError, load_recipe

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT = os.path.join(ROOT, "recipes", "minilm-bbc-2of4-transposable.yaml")


def _recipe(**distill):
    with open(DEFAULT, encoding="utf-8") as f:
        d = yaml.safe_load(f)
    d["distill"] = distill
    d["pruning"][0]["schedule"]["at_step"] = 1
    return d


def test_distill_block_loads_strictly():
    r = load_recipe(_recipe(teacher="dense", alpha=0.7, temperature=3))
    assert r.distill == DistillConfig("dense", 0.7, 3.0)
    assert load_recipe(_recipe()).distill == DistillConfig()
    with open(DEFAULT, encoding="utf-8") as f:
        assert load_recipe(yaml.safe_load(f)).distill is None
    for bad, match in [({"alpha": 1.5}, r"distill.alpha: expected .*\[0.0, 1.0\]"),
                       ({"temperature": 0}, "distill.temperature"),
                       ({"teacher": "bert"}, "distill.teacher: expected one of dense or a path"),
                       ({"beta": 1}, "distill.beta: unknown key; allowed keys: teacher, alpha, temperature, teacher_train"),
                       ({"teacher_train": {"epochs": 2}}, r"distill.teacher_train.epochs: unknown key; allowed "
                                                          r"keys: lr, head_lr, weight_decay, warmup_ratio"),
                       ({"teacher_train": {"lr": 0}}, r"distill.teacher_train.lr: expected a number in \(0.0"),
                       ({"teacher_train": {}}, "distill.teacher_train: expected a mapping with one or more"),
                       ({"teacher_train": 1e-4}, "distill.teacher_train: expected a mapping"),
                       ({"teacher": "./run", "teacher_train": {"lr": 1e-4}},
                        "distill.teacher_train: only with teacher: dense")]:
        with pytest.raises(RecipeError, match=match):
            load_recipe(_recipe(**bad))


def test_teacher_train_sets_the_dense_teachers_settings_and_round_trips():
    r = load_recipe(_recipe(teacher="dense", teacher_train={"lr": 1e-4, "warmup_ratio": 0.1}))
    assert r.distill.teacher_train == (("lr", 1e-4), ("warmup_ratio", 0.1))
    t = r.distill.teacher_recipe_train(r.train.__class__(lr=3e-4, head_lr=2e-3, seed=4))
    assert (t.lr, t.warmup_ratio, t.head_lr, t.seed) == (1e-4, 0.1, 2e-3, 4)
    assert load_recipe(r.to_dict()).distill == r.distill
    assert "teacher_train" not in load_recipe(_recipe(teacher="dense")).to_dict()["distill"]


def test_teacher_train_picks_the_dense_run_with_those_settings(tmp_path, monkeypatch):
    """A student at lr 3e-4 with ``teacher_train: {lr: 1e-4}`` gets the dense run at lr 1e-4 as its
    teacher: the cache folder of that run's key, not of its own settings (nothing is trained here)."""
    import sparse.finetune as ft

    monkeypatch.setenv("SPARSE_CACHE_DIR", str(tmp_path / "cache"))
    d = _recipe(teacher="dense", teacher_train={"lr": 1e-4})
    d["train"]["lr"] = 3e-4
    student = load_recipe(d)
    dense = load_recipe(_recipe(teacher="dense")).replace(distill=None, pruning=())
    kw = dict(max_steps=2, limit_train=32, limit_test=16, progress=False)
    assert dense.train.lr == 1e-4 and student.train.lr == 3e-4
    loaded = []
    monkeypatch.setattr(ft, "load_teacher", lambda folder: loaded.append(folder) or "teacher")
    want = teacher_dir(run_key(dense, 0, 2, 32, 16))
    assert want != teacher_dir(run_key(student, 0, 2, 32, 16))
    os.makedirs(want)
    open(os.path.join(want, "model.safetensors"), "wb").close()
    assert resolve_teacher(student, **kw) == "teacher"
    assert loaded == [want]
    # the same run is the one the student's accuracy is compared to (finetune's dense_accuracy)
    assert ft.plan_run(ft.baseline_recipe(student), 32, 16, 2).key == ft.plan_run(dense, 32, 16, 2).key
    assert ft.baseline_recipe(dense) is dense


def test_distill_loss_limits_and_gradient():
    torch.manual_seed(0)
    s = torch.randn(8, 5, requires_grad=True)
    t = torch.randn(8, 5)
    y = torch.randint(0, 5, (8,))
    ce = torch.nn.functional.cross_entropy(s, y)
    assert torch.allclose(distill_loss(s, t, y, 0.0, 2.0), ce)
    assert float(distill_loss(t, t, y, 1.0, 2.0)) == pytest.approx(0.0, abs=1e-6)
    # pure distillation pulls the student's distribution towards the teacher's
    distill_loss(s, t, y, 1.0, 1.0).backward()
    p_s, p_t = s.softmax(-1), t.softmax(-1)
    assert torch.allclose(s.grad, (p_s - p_t) / 8, atol=1e-6)


def test_head_lr_follows_the_layer_policy():
    """Every layer the policy calls a head (``lm_head`` included) trains at head_lr; no decay on 1-D params."""
    model = torch.nn.ModuleDict({"encoder": torch.nn.Linear(4, 4), "lm_head": torch.nn.Linear(4, 8),
                                 "classifier": torch.nn.Linear(4, 2), "pooler": torch.nn.Linear(4, 4),
                                 "score": torch.nn.Linear(4, 2), "norm": torch.nn.LayerNorm(4),
                                 "frozen": torch.nn.Linear(4, 4)})
    model["frozen"].requires_grad_(False)
    groups = param_groups(model, lr=1e-4, head_lr=1e-3, weight_decay=0.01)
    got = {id(p): (g["lr"], g["weight_decay"]) for g in groups for p in g["params"]}
    heads = {"lm_head", "classifier", "pooler", "score"}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            assert id(p) not in got
            continue
        assert got[id(p)] == (1e-3 if name.split(".")[0] in heads else 1e-4, 0.01 if p.dim() >= 2 else 0.0), name
    assert got[id(model["lm_head"].weight)][0] == 1e-3
    assert len(got) == sum(1 for p in model.parameters() if p.requires_grad)


def test_teacher_is_the_callers_to_resolve():
    r = load_recipe(_recipe(teacher="dense"))
    with pytest.raises(ValueError, match=r"teacher: .* distils .*pass teacher=resolve_teacher"):
        finetune(r, max_steps=1, progress=False, use_cache=False)
    plain = r.replace(distill=None)
    assert resolve_teacher(plain) is None
    with pytest.raises(ValueError, match="teacher: .* has no distill block"):
        finetune(plain, teacher=torch.nn.Linear(1, 1), max_steps=1, progress=False, use_cache=False)


def test_dense_teacher_is_trained_once_cached_and_reused(tmp_path, monkeypatch, caplog):
    pytest.importorskip("transformers")
    monkeypatch.setenv("SPARSE_CACHE_DIR", str(tmp_path / "cache"))
    r = load_recipe(_recipe(teacher="dense", alpha=0.5, temperature=2.0))
    kw = dict(max_steps=2, limit_train=32, limit_test=16, progress=False)
    with caplog.at_level(logging.WARNING, logger="sparse.finetune"):
        first = finetune(r, teacher=resolve_teacher(r, **kw), **kw)
    assert "fine-tuning it first" in caplog.text
    folder = teacher_dir(run_key(r, 0, 2, 32, 16))
    assert os.path.isfile(os.path.join(folder, "model.safetensors"))
    assert first.dense_accuracy is not None            # the teacher run is the cached dense run
    assert any(f"distilled from {folder}" in n for n in first.notes)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="sparse.finetune"):
        second = finetune(r, teacher=resolve_teacher(r, **kw), **kw)
    assert "fine-tuning it first" not in caplog.text   # reused
    assert second.accuracy == first.accuracy and second.layers == first.layers
    # without the cache the teacher is trained into a temporary folder and nothing is kept
    monkeypatch.setenv("SPARSE_CACHE_DIR", str(tmp_path / "cache2"))
    finetune(r, teacher=resolve_teacher(r, use_cache=False, **kw), use_cache=False, **kw)
    assert not os.path.exists(tmp_path / "cache2")


def test_teacher_folder_errors(tmp_path):
    pytest.importorskip("transformers")
    kw = dict(max_steps=1, limit_train=16, limit_test=8, progress=False, use_cache=False)
    with pytest.raises(FileNotFoundError, match="distill.teacher: .* is not a model folder"):
        resolve_teacher(load_recipe(_recipe(teacher=str(tmp_path))), **kw)
    import transformers

    cfg = transformers.BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=64, num_labels=3)
    transformers.BertForSequenceClassification(cfg).save_pretrained(tmp_path / "three")
    r = load_recipe(_recipe(teacher=str(tmp_path / "three")))
    with pytest.raises(ValueError, match="classifies 3 labels, the dataset has 5"):
        finetune(r, teacher=resolve_teacher(r, **kw), **kw)


def test_teacher_logits_memo_unit():
    from sparse.finetune import TeacherLogits

    memo = TeacherLogits(5)
    idx = torch.tensor([3, 0])
    assert memo.get(idx) is None
    memo.put(idx, torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.bfloat16))
    assert torch.equal(memo.get(torch.tensor([0, 3])), torch.tensor([[3.0, 4.0], [1.0, 2.0]]))
    assert memo.get(torch.tensor([0, 1])) is None  # example 1 not seen yet
    assert memo.logits.dtype == torch.float32


def test_teacher_runs_in_the_first_epoch_only_and_changes_nothing(tmp_path, monkeypatch):
    """A distilled run calls the frozen teacher once per example (its first epoch) and reuses the logits
    after; the trained model equals the one trained with the teacher run at every step (float rounding)."""
    pytest.importorskip("transformers")
    import sparse.finetune as ft

    monkeypatch.setenv("SPARSE_CACHE_DIR", str(tmp_path / "cache"))
    r = load_recipe(_recipe(teacher="dense", alpha=0.5, temperature=2.0))
    kw = dict(epochs=2, limit_train=24, limit_test=4, progress=False)
    teacher = resolve_teacher(r, **kw)
    rows = []
    hook = teacher.register_forward_pre_hook(lambda m, a, k: rows.append(k["input_ids"].shape[0]), with_kwargs=True)
    torch.manual_seed(0)
    memo_run = finetune(r, teacher=teacher, out_dir=str(tmp_path / "memo"), **kw)
    n_train = memo_run.n_train
    assert sum(rows) == n_train and memo_run.steps == 2 * len(rows)  # one epoch of teacher calls, two of steps
    rows.clear()
    monkeypatch.setattr(ft.TeacherLogits, "get", lambda self, idx: None)  # the teacher at every step
    torch.manual_seed(0)
    every = finetune(r, teacher=teacher, out_dir=str(tmp_path / "every"), **kw)
    hook.remove()
    assert sum(rows) == 2 * n_train
    from safetensors.torch import load_file

    a, b = load_file(str(tmp_path / "memo" / "model.safetensors")), load_file(str(tmp_path / "every" / "model.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)
    assert every.accuracy == memo_run.accuracy
