"""``sparse.finetune`` step helpers: batches cut to their longest text (outputs unchanged), the fused
AdamW under the SparseOptimizer, ``train.bf16: auto``."""
import dataclasses

import torch
from transformers import BertConfig, BertForSequenceClassification

from sparse.finetune import Split, build_optimizer
from sparse.recipe import load_recipe


def _split(lengths, width=12, left=False):
    ids = torch.zeros(len(lengths), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    g = torch.Generator().manual_seed(0)
    for r, n in enumerate(lengths):
        cols = slice(width - n, width) if left else slice(0, n)
        ids[r, cols] = torch.randint(5, 90, (n,), generator=g)
        mask[r, cols] = 1
    return Split(ids, mask, torch.zeros(len(lengths), dtype=torch.long), ids % 2)


def test_inputs_drop_only_columns_that_are_padding_in_every_row():
    s = _split([3, 7, 5, 2])
    b = s.inputs(torch.tensor([0, 2]))
    assert b["input_ids"].shape == (2, 5) and b["attention_mask"].shape == (2, 5)
    assert b["token_type_ids"].shape == (2, 5)
    assert torch.equal(b["input_ids"], s.input_ids[[0, 2], :5])
    assert s.inputs(slice(0, 4))["input_ids"].shape == (4, 7)
    # left padding: the last column holds real tokens, nothing is cut (positions would move)
    assert _split([3, 7], left=True).inputs(slice(0, 2))["input_ids"].shape == (2, 12)
    # a batch of padding only keeps its shape rather than becoming zero-width
    empty = Split(torch.zeros(2, 4, dtype=torch.long), torch.zeros(2, 4, dtype=torch.long), torch.zeros(2))
    assert empty.inputs(slice(0, 2))["input_ids"].shape == (2, 4)


def test_cut_batch_gives_the_same_logits_as_the_padded_one():
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=16, num_labels=3)
    model = BertForSequenceClassification(cfg).eval()
    s = _split([3, 7, 5, 2])
    full = model(input_ids=s.input_ids, attention_mask=s.attention_mask,
                 token_type_ids=s.token_type_ids).logits
    cut = model(**s.inputs(slice(0, 4))).logits
    torch.testing.assert_close(cut, full, rtol=1e-5, atol=1e-5)


def test_build_optimizer_uses_fused_adamw_on_cpu():
    cfg = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=16, num_labels=2)
    model = BertForSequenceClassification(cfg)
    recipe = load_recipe({"name": "t", "model": {"source": "minilm"}, "data": {"dataset": "bbc_news"},
                          "pruning": []})
    opt, _ = build_optimizer(model, recipe, total=10)
    assert opt.optimizer.defaults["fused"] is True
    before = [p.detach().clone() for p in model.parameters()]
    model(input_ids=torch.randint(0, 100, (2, 5))).logits.sum().backward()
    opt.step()
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))



def test_bf16_auto_resolves_to_what_the_hardware_runs_faster(monkeypatch):
    import sparse.finetune as ft

    assert ft.resolve_bf16(True) is True and ft.resolve_bf16(False) is False
    assert ft.resolve_bf16("auto") is ft.cpu_has_amx()  # the real probe: a bool on every CPU
    monkeypatch.setattr(ft, "cpu_has_amx", lambda: True)
    assert ft.resolve_bf16("auto") is True
    monkeypatch.setattr(ft, "cpu_has_amx", lambda: False)
    assert ft.resolve_bf16("auto") is False
    assert ft.resolve_bf16("auto", device="cuda") is (torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    recipe = load_recipe({"name": "t", "model": {"source": "minilm"}, "data": {"dataset": "bbc_news"},
                          "train": {"bf16": "auto"}, "pruning": []})
    assert recipe.train.bf16 == "auto"
    # the run, its cache key and its saved recipe see the resolved value
    assert ft.apply_overrides(recipe, None, None).train.bf16 is False
    assert ft.apply_overrides(recipe, 2, 5).train == dataclasses.replace(recipe.train, epochs=2, seed=5, bf16=False)


def test_run_key_names_auto_and_its_resolution_alike(monkeypatch):
    import sparse.finetune as ft

    base = {"name": "t", "model": {"source": "minilm"}, "data": {"dataset": "bbc_news"}, "pruning": []}
    auto, off, on = (load_recipe({**base, "train": {"bf16": v}}) for v in ("auto", False, True))
    monkeypatch.setattr(ft, "cpu_has_amx", lambda: False)
    assert ft.run_key(auto, 0, 2, 32, 16) == ft.run_key(off, 0, 2, 32, 16) != ft.run_key(on, 0, 2, 32, 16)
    monkeypatch.setattr(ft, "cpu_has_amx", lambda: True)
    assert ft.run_key(auto, 0, 2, 32, 16) == ft.run_key(on, 0, 2, 32, 16)
