"""MLPruner on every family: one_shot leaves about ``keep``; pack() is smaller with the masked outputs."""
import pytest
import torch
import torch.nn as nn

from sparse.mlpruning import HeadlessAttention, MLPruner, RowPrunedLinear
from sparse.mlpruning.families import encoder_layers, family_of, get_module
from sparse.mlpruning.pack import encoder_weight_count
from sparse.nn import BlockSparseLinear

FAMILIES = ("bert", "distilbert", "roberta")

LEVELS = [["heads"], ["rows"], ["blocks"], ["heads", "rows"], ["heads", "blocks"], ["heads", "rows", "blocks"]]
ATOL = 1e-5


def logits(model, x):
    with torch.no_grad():
        return model(**x).logits


def n_params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("family", FAMILIES)
def test_keep_all_masks_change_nothing(tiny, inputs, family):
    model = tiny(family)
    x = inputs()
    ref = logits(model, x)
    MLPruner(model, {"levels": ["heads", "rows", "blocks"], "block": [16, 16]})
    assert torch.equal(logits(model, x), ref)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("levels", LEVELS, ids="+".join)
def test_pack_equals_masked_model(tiny, inputs, family, levels, randomise):
    model = tiny(family)
    x = inputs()
    dense = logits(model, x)
    pruner = MLPruner(model, {"levels": levels, "block": [16, 16]})
    randomise(pruner, seed=1)
    p = pruner.one_shot(0.5)
    assert abs(p - 0.5) < 0.12
    masked = logits(model, x)
    assert not torch.allclose(masked, dense, atol=1e-4)  # the masks do something
    packed = pruner.pack()
    assert torch.allclose(logits(packed, x), masked, atol=ATOL, rtol=1e-4)
    fam = family_of(packed)
    stored = encoder_weight_count(encoder_layers(packed, fam), fam)
    assert stored == packed.config.mlpruning["encoder_weights"]
    if any("pruned blocks zeroed" in n for n in packed.config.mlpruning["notes"]):
        assert stored / pruner.reference_weights > p  # blocks and rows in one stage: zeros stay stored
    else:
        assert stored / pruner.reference_weights == pytest.approx(p)
    assert n_params(packed) < n_params(model)
    # the model and the pruner are untouched by packing
    assert torch.equal(logits(model, x), masked)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("keep", [0.8, 0.5, 0.3])
def test_one_shot_leaves_about_keep(tiny, family, keep):
    model = tiny(family, hidden=128, ffn=512, heads=8)
    pruner = MLPruner(model, {"levels": ["heads", "rows"]})
    p = pruner.one_shot(keep)
    assert abs(p - keep) < 0.03
    assert pruner.remaining_fraction(hard=True) == p
    fam = family_of(model)
    packed = pruner.pack()
    assert encoder_weight_count(encoder_layers(packed, fam), fam) == pytest.approx(p * pruner.reference_weights)


def test_packed_modules_are_physically_smaller(tiny, inputs):
    model = tiny("bert")
    pruner = MLPruner(model, {"levels": ["heads", "rows"]})
    for i in range(2):
        pruner.units[f"layer{i}_heads"].topk.set_count(1)
        pruner.units[f"layer{i}_ffn_in_rows"].topk.set_count(40)
        pruner.units[f"layer{i}_attn_out_rows"].topk.set_count(50)
        pruner.units[f"layer{i}_ffn_out_rows"].topk.set_count(60)
    packed = pruner.pack()
    layer = packed.bert.encoder.layer[0]
    assert layer.attention.self.query.weight.shape == (16, 64)  # one head of 16
    assert layer.attention.self.num_attention_heads == 1
    out = layer.attention.output.dense
    assert isinstance(out, RowPrunedLinear) and out.linear.weight.shape == (50, 16) and out.out_features == 64
    assert layer.intermediate.dense.weight.shape == (40, 64)
    ffn_out = layer.output.dense
    assert isinstance(ffn_out, RowPrunedLinear) and ffn_out.linear.weight.shape == (60, 40)
    assert packed.config.mlpruning["layers"][0]["heads"] == 1
    assert packed.config.mlpruning["layers"][0]["intermediate_size"] == 40


@pytest.mark.parametrize("family", FAMILIES)
def test_layer_with_all_heads_pruned_loses_its_attention(tiny, inputs, family):
    model = tiny(family)
    x = inputs()
    pruner = MLPruner(model, {"levels": ["heads"]})
    pruner.units["layer0_heads"].topk.set_count(0)
    pruner.units["layer1_heads"].topk.set_count(2)
    assert any("layer 0: all heads pruned" in n for n in pruner.report()["notes"])
    masked = logits(model, x)
    packed = pruner.pack()
    assert torch.allclose(logits(packed, x), masked, atol=ATOL, rtol=1e-4)
    fam = family_of(packed)
    layer = encoder_layers(packed, fam)[0]
    attn = get_module(layer, fam.attention)
    assert isinstance(attn, HeadlessAttention)
    assert get_module(layer, fam.matrices["query"]) is None
    assert packed.config.mlpruning["layers"][0]["attention_removed"] is True
    assert any("layer.0" in n and "attention removed" in n for n in packed.config.mlpruning["notes"])
    # the attention block now adds exactly the output matrix's bias to the residual
    out_proj = get_module(layer, fam.matrices["attn_out"])
    assert out_proj.weight.shape == (64, 0)
    h = torch.randn(2, 5, 64)
    if fam.out_in_attention:
        got, _ = attn(h)
        assert torch.equal(got, out_proj.bias.detach().expand(2, 5, 64))
    else:
        got, _ = layer.attention(h)
        ln = layer.attention.output.LayerNorm
        assert torch.allclose(got, ln(h + out_proj.bias), atol=1e-6)


@pytest.mark.parametrize("family", FAMILIES)
def test_two_stages_heads_rows_then_blocks(tiny, inputs, family, randomise):
    model = tiny(family)
    x = inputs()
    first = MLPruner(model, {"levels": ["heads", "rows"], "row_multiple": 16})
    randomise(first)
    first.one_shot(0.6)
    stage1 = first.pack()
    ref = logits(stage1, x)
    second = MLPruner(stage1, {"levels": ["blocks"], "block": [16, 16], "target": 0.3})
    assert second.reference_weights == first.reference_weights  # targets count against the dense model
    assert torch.equal(logits(stage1, x), ref)
    randomise(second, seed=3)
    p = second.one_shot(0.3)
    assert abs(p - 0.3) < 0.08
    masked = logits(stage1, x)
    stage2 = second.pack()
    assert torch.allclose(logits(stage2, x), masked, atol=ATOL, rtol=1e-4)
    kinds = [type(m) for m in stage2.modules()]
    assert BlockSparseLinear in kinds
    assert not any("dense Linear with pruned blocks zeroed" in n for n in stage2.config.mlpruning["notes"])
    assert stage2.config.mlpruning["remaining_fraction"] == pytest.approx(p)


def test_blocks_with_rows_in_one_stage_fall_back_to_dense_and_say_so(tiny, inputs, randomise):
    model = tiny("bert")
    x = inputs()
    pruner = MLPruner(model, {"levels": ["rows", "blocks"], "block": [16, 16]})
    randomise(pruner)
    pruner.one_shot(0.5)
    masked = logits(model, x)
    packed = pruner.pack()
    assert torch.allclose(logits(packed, x), masked, atol=ATOL, rtol=1e-4)
    assert any("second stage" in n for n in packed.config.mlpruning["notes"])


def test_masks_train_scores_and_thresholds(tiny, inputs):
    model = tiny("roberta")
    model.train()
    x = inputs()
    y = torch.tensor([0, 1, 2, 0])
    pruner = MLPruner(model, {"levels": ["heads", "rows"], "target": 0.5, "threshold_init": 3.0,
                              "threshold_lr": 0.5})
    opt = torch.optim.AdamW([{"params": list(model.parameters())}, *pruner.param_groups()], lr=1e-3)
    t0 = torch.stack([t.detach().clone() for t in pruner.threshold_parameters()])
    s0 = torch.cat([s.detach().clone().flatten() for s in pruner.score_parameters()])
    for _ in range(5):
        loss = nn.functional.cross_entropy(model(**x).logits, y) + pruner.regularization_loss()
        opt.zero_grad()
        loss.backward()
        assert all(s.grad is not None for s in pruner.score_parameters())
        opt.step()
    t1 = torch.stack([t.detach() for t in pruner.threshold_parameters()])
    assert (t1 < t0).all()  # far above the target: the regulariser wins
    assert not torch.equal(torch.cat([s.detach().flatten() for s in pruner.score_parameters()]), s0)
    assert all("threshold" in n for n, _ in pruner.named_parameters() if n.endswith("threshold"))
    assert sum("threshold" in n for n, _ in pruner.named_parameters()) == len(pruner.threshold_parameters())
    assert not any("threshold" in n or "scores" in n for n, _ in model.named_parameters())


def test_first_order_scores(tiny, inputs):
    model = tiny("bert")
    x = inputs()
    batches = [{**x, "labels": torch.tensor([0, 1, 2, 1])}]
    pruner = MLPruner(model, {"levels": ["heads", "rows"], "scorer": "first-order"}, calibration=batches)
    s = pruner.units["layer0_ffn_in_rows"].scores
    assert s.mean().item() == pytest.approx(1.0, rel=1e-5) and s.std() > 0
    assert all(p.grad is None for p in model.parameters())
    with pytest.raises(ValueError, match="calibration"):
        MLPruner(tiny("bert"), {"levels": ["heads"], "scorer": "first-order"})


def test_state_dict_round_trip_same_recipe(tiny, randomise):
    recipe = {"levels": ["heads", "rows"], "target": 0.4}
    a = MLPruner(tiny("bert"), recipe)
    randomise(a)
    a.one_shot(0.4)
    b = MLPruner(tiny("bert"), recipe)
    b.load_state_dict(a.state_dict())
    assert {k: v.tolist() for k, v in a.hard_masks().items()} == {k: v.tolist() for k, v in b.hard_masks().items()}


def test_remove_restores_the_dense_model(tiny, inputs):
    model = tiny("distilbert")
    x = inputs()
    ref = logits(model, x)
    pruner = MLPruner(model, {"levels": ["heads", "rows"]})
    pruner.one_shot(0.5)
    assert not torch.allclose(logits(model, x), ref)
    pruner.remove()
    assert torch.equal(logits(model, x), ref)
    assert all(type(m) is nn.Linear for n, m in model.named_modules() if n.endswith(("q_lin", "lin1")))
