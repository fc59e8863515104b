"""MLPruning through sparse.finetune: shipped recipes load; both stages run end to end and save packed models."""
import os

import pytest
import torch

from sparse.finetune import baseline_recipe, evaluate, finetune, is_dense, load_data, resolve_teacher, run_key
from sparse.mlpruning import is_packed_folder, load_packed
from sparse.nn import BlockSparseLinear
from sparse.recipe import RecipeError, load_recipe

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMALL = dict(limit_train=24, limit_test=16, max_steps=3, progress=False, use_cache=False)


def recipe(**changes):
    base = load_recipe(os.path.join(ROOT, "recipes", "mlpruning-minilm-bbc.yaml")).to_dict()
    base["model"]["max_length"] = 32
    base["train"]["batch_size"] = 8
    base["mlpruning"].update({"threshold_init": 1.0, "threshold_lr": 0.5})  # move within 3 steps
    for k, v in changes.items():
        base[k] = v
    return load_recipe(base)


def test_shipped_recipes_load():
    one = load_recipe(os.path.join(ROOT, "recipes", "mlpruning-minilm-bbc.yaml"))
    two = load_recipe(os.path.join(ROOT, "recipes", "mlpruning-minilm-bbc-blocks.yaml"))
    assert one.mlpruning.levels == ("heads", "rows") and one.mlpruning.target == 0.5 and one.distill is not None
    assert one.mlpruning.distill is not None and one.mlpruning.row_multiple == 32
    assert two.mlpruning.levels == ("blocks",) and two.mlpruning.block == (32, 32)
    assert not is_dense(one) and not is_dense(two)
    dense = load_recipe(os.path.join(ROOT, "recipes", "minilm-bbc-dense.yaml"))
    assert (one.model, one.data, one.train) == (dense.model, dense.data, dense.train)  # shares the dense teacher
    # the faster allocation: heads and FFN rows only, the same run otherwise (and the same teacher)
    ffn = load_recipe(os.path.join(ROOT, "recipes", "mlpruning-minilm-bbc-ffn.yaml"))
    assert ffn.mlpruning.rows == ("ffn_in",) and ffn.mlpruning.levels == one.mlpruning.levels
    assert ffn.mlpruning.target == one.mlpruning.target and ffn.mlpruning.row_multiple == 32
    assert (ffn.model, ffn.data) == (one.model, one.data) and ffn.train.lr == pytest.approx(3 * one.train.lr)
    # 3x the dense lr (chosen on validation), distilled from the same dense run as the 50% all-rows recipe
    assert baseline_recipe(ffn).train == one.train == dense.train
    assert run_key(baseline_recipe(ffn), 0, 303, 1602, 445) == run_key(baseline_recipe(one), 0, 303, 1602, 445)
    two_src = two.model.source
    assert "mlpruning-minilm-bbc-ffn" in two_src and two.distill.teacher == two_src  # the stage measured


def test_mlpruning_block_is_strict():
    with pytest.raises(RecipeError, match=r"mlpruning.targets: unknown key; allowed keys: levels"):
        load_recipe({"name": "x", "mlpruning": {"levels": ["heads"], "targets": 0.5}})
    with pytest.raises(RecipeError, match="cannot be combined with pruning entries"):
        load_recipe({"name": "x", "mlpruning": {"levels": ["heads"]},
                     "pruning": [{"pattern": {"type": "nm", "n": 2, "m": 4}}]})


def test_two_stages_end_to_end(tmp_path):
    r1 = recipe()
    teacher = resolve_teacher(r1, **SMALL)  # dense fine-tune of 3 steps (no cache)
    out1 = str(tmp_path / "stage1")
    res = finetune(r1, teacher=teacher, out_dir=out1, **SMALL)
    info = res.extra["mlpruning"]
    assert is_packed_folder(out1) and os.path.isfile(os.path.join(out1, "result.json"))
    assert info["remaining_fraction"] < 1.0 and "heads" in info["layers"][0]
    assert any(n.startswith("mlpruning: the packed model keeps") for n in res.notes)
    stage1 = load_packed(out1)
    assert stage1.config.mlpruning["encoder_weights"] == info["encoder_weights"]
    # the saved model is the packed model whose accuracy the result reports
    data = load_data(r1, SMALL["limit_train"], SMALL["limit_test"])
    acc = evaluate(stage1, data.test.input_ids, data.test.attention_mask, data.test.labels, 32, bf16=False)
    assert acc == info["packed_accuracy"]

    r2 = recipe(model={"source": out1, "max_length": 32}, distill={"teacher": out1, "alpha": 0.5, "temperature": 2.0},
                mlpruning={"levels": ["blocks"], "block": [32, 32], "target": 0.3, "threshold_init": 0.0})
    teacher2 = resolve_teacher(r2, **SMALL)
    out2 = str(tmp_path / "stage2")
    res2 = finetune(r2, teacher=teacher2, out_dir=out2, **SMALL)
    stage2 = load_packed(out2)
    assert any(isinstance(m, BlockSparseLinear) for m in stage2.modules())
    assert res2.extra["mlpruning"]["remaining_fraction"] < info["remaining_fraction"]
    assert stage2.config.mlpruning["dense_encoder_weights"] == stage1.config.mlpruning["dense_encoder_weights"]
    with torch.no_grad():
        x = {"input_ids": data.test.input_ids[:2], "attention_mask": data.test.attention_mask[:2]}
        assert stage2(**x).logits.shape == (2, 5)
