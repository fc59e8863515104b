"""Bad input: each a clear ValueError (RecipeError is one) naming the argument."""
import math

import pytest
import torch
import torch.nn as nn

from sparse.mlpruning import MLPruner, MLPruningConfig
from sparse.mlpruning.regularizer import AdaptiveRegularizer
from sparse.recipe import RecipeError


@pytest.mark.parametrize("keep", [0, 0.0, -0.1, 1.01, math.nan, math.inf, True, "0.5", None])
def test_keep_outside_zero_one(tiny, keep):
    pruner = MLPruner(tiny("bert"), {"levels": ["heads", "rows"]})
    with pytest.raises(ValueError, match=r"keep: expected a fraction of the encoder weights in \(0, 1\]"):
        pruner.one_shot(keep)


def test_keep_one_keeps_everything(tiny):
    pruner = MLPruner(tiny("bert"), {"levels": ["heads", "rows"]})
    assert pruner.one_shot(1.0) == 1.0


def test_pack_before_pruning_returns_an_equal_dense_copy(tiny, inputs):
    model = tiny("roberta")
    x = inputs()
    pruner = MLPruner(model, {"levels": ["heads", "rows", "blocks"], "block": [16, 16]})
    packed = pruner.pack()
    assert packed is not model
    with torch.no_grad():
        assert torch.equal(packed(**x).logits, model(**x).logits)
    assert sum(p.numel() for p in packed.parameters()) == sum(p.numel() for p in model.parameters())
    layer = packed.roberta.encoder.layer[0]
    for mod in (layer.attention.self.query, layer.attention.output.dense, layer.intermediate.dense,
                layer.output.dense):
        assert type(mod) is nn.Linear
    assert any("nothing pruned" in n for n in packed.config.mlpruning["notes"])


def test_block_that_does_not_divide_the_shape(tiny):
    with pytest.raises(ValueError, match=r"recipe.block: 48x48 does not divide .*query weight \[64, 64\]"):
        MLPruner(tiny("bert"), {"levels": ["blocks"], "block": [48, 48]})
    with pytest.raises(ValueError, match=r"recipe.block: 32x24 does not divide"):
        MLPruner(tiny("distilbert"), {"levels": ["blocks"], "block": [32, 24]})
    with pytest.raises(RecipeError, match=r"mlpruning.block\[0\]"):
        MLPruningConfig.from_dict({"levels": ["blocks"], "block": [0, 32]})


@pytest.mark.parametrize("target", [0, 0.0, -0.5, 1.5])
def test_target_outside_zero_one(tiny, target):
    with pytest.raises(RecipeError, match=r"mlpruning.target: expected a number in \(0.0, 1.0\]"):
        MLPruningConfig.from_dict({"levels": ["heads"], "target": target})
    with pytest.raises(ValueError, match="target"):
        MLPruner(tiny("bert"), {"levels": ["heads"], "target": target})
    with pytest.raises(ValueError, match="target"):
        MLPruningConfig(target=target)
    with pytest.raises(ValueError, match="target"):
        AdaptiveRegularizer(target)


def test_thresholds_from_another_recipe(tiny):
    a = MLPruner(tiny("bert"), {"levels": ["heads", "rows"], "target": 0.5})
    a.one_shot(0.5)
    state = a.state_dict()
    b = MLPruner(tiny("bert"), {"levels": ["heads", "rows"], "target": 0.3})  # same units, other recipe
    with pytest.raises(ValueError, match="state_dict: saved by an MLPruner with another recipe"):
        b.load_state_dict(state)
    c = MLPruner(tiny("bert"), {"levels": ["heads"], "target": 0.5})
    with pytest.raises(ValueError, match="state_dict"):
        c.load_state_dict(state)
    without = {k: v for k, v in state.items() if k != "fingerprint"}
    with pytest.raises(ValueError, match="fingerprint none"):
        MLPruner(tiny("bert"), {"levels": ["heads", "rows"], "target": 0.5}).load_state_dict(without)
    # a model of another shape under the same recipe is refused too
    d = MLPruner(tiny("bert", ffn=256), {"levels": ["heads", "rows"], "target": 0.5})
    with pytest.raises(ValueError, match="state_dict"):
        d.load_state_dict(state)


def test_unknown_and_bad_recipe_keys():
    with pytest.raises(RecipeError, match=r"mlpruning.level: unknown key; allowed keys: levels, target"):
        MLPruningConfig.from_dict({"level": ["heads"]})
    with pytest.raises(RecipeError, match=r"mlpruning.levels: expected one of heads, rows, blocks, got 'neurons'"):
        MLPruningConfig.from_dict({"levels": ["neurons"]})
    with pytest.raises(RecipeError, match=r"mlpruning.levels: expected a non-empty list"):
        MLPruningConfig.from_dict({"levels": []})
    with pytest.raises(RecipeError, match=r"mlpruning.levels: required key missing"):
        MLPruningConfig.from_dict({"target": 0.5})
    with pytest.raises(RecipeError, match=r"mlpruning.scorer: expected one of magnitude, first-order"):
        MLPruningConfig.from_dict({"levels": ["heads"], "scorer": "movement"})
    with pytest.raises(RecipeError, match=r"mlpruning.distill.alpha: unknown key; allowed keys: hidden_mse"):
        MLPruningConfig.from_dict({"levels": ["heads"], "distill": {"alpha": 0.5}})
    cfg = MLPruningConfig.from_dict({"levels": ["rows", "heads"], "rows": ["ffn_in"], "block": 16})
    assert cfg.levels == ("heads", "rows") and cfg.block == (16, 16) and cfg.rows == ("ffn_in",)


def test_recipe_of_the_wrong_type(tiny):
    with pytest.raises(ValueError, match="recipe: expected an MLPruningConfig"):
        MLPruner(tiny("bert"), ["heads"])


def test_unsupported_family_names_the_supported_ones():
    from transformers import GPT2Config, GPT2Model

    model = GPT2Model(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=50, n_positions=16))
    with pytest.raises(ValueError, match=r"model: MLPruning supports the families bert, roberta, distilbert .*"
                                         r"got model_type 'gpt2'.*add a Family row to FAMILIES"):
        MLPruner(model, {"levels": ["heads"]})
    with pytest.raises(ValueError, match="without a Hugging Face config"):
        MLPruner(nn.Linear(4, 4), {"levels": ["heads"]})


def test_second_pruner_on_the_same_model(tiny):
    model = tiny("bert")
    MLPruner(model, {"levels": ["heads"]})
    with pytest.raises(ValueError, match="already parametrized"):
        MLPruner(model, {"levels": ["rows"]})


def test_levels_with_nothing_to_prune(tiny):
    model = tiny("bert")
    pruner = MLPruner(model, {"levels": ["heads"]})
    for i in range(2):
        pruner.units[f"layer{i}_heads"].topk.set_count(0)
    packed = pruner.pack()  # every layer headless: no heads left to choose from
    with pytest.raises(ValueError, match="recipe: levels"):
        MLPruner(packed, {"levels": ["heads"]})
