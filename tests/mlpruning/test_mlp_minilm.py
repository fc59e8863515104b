"""The real pretrained MiniLM-L6: heads and rows to about half, packed, blocks on top, saved and reloaded."""
import os

import pytest
import torch

from sparse.mlpruning import MLPruner, load_packed
from sparse.mlpruning.families import encoder_layers, family_of
from sparse.mlpruning.pack import encoder_weight_count
from sparse.nn import BlockSparseLinear

TEXTS = ["Shares in the bank rose sharply after the quarterly results beat forecasts.",
         "The striker scored twice as the club moved top of the league.",
         "A new film festival opens in the city next week."]


def hidden(model, x):
    with torch.no_grad():
        return model(**x).last_hidden_state


def test_minilm_heads_rows_then_blocks(tmp_path, minilm_dir):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(minilm_dir).eval()
    tok = AutoTokenizer.from_pretrained(minilm_dir)
    x = dict(tok(TEXTS, padding=True, return_tensors="pt"))
    dense_params = sum(p.numel() for p in model.parameters())

    pruner = MLPruner(model, {"levels": ["heads", "rows"], "target": 0.5, "row_multiple": 32})
    assert pruner.reference_weights == 6 * (4 * 384 * 384 + 2 * 384 * 1536)
    p = pruner.one_shot(0.5)
    assert abs(p - 0.5) < 0.02
    masked = hidden(model, x)
    packed = pruner.pack()
    assert torch.allclose(hidden(packed, x), masked, atol=1e-4, rtol=1e-4)
    fam = family_of(packed)
    assert encoder_weight_count(encoder_layers(packed, fam), fam) == pytest.approx(p * pruner.reference_weights)
    assert sum(p.numel() for p in packed.parameters()) < dense_params
    heads = [lr["heads"] for lr in packed.config.mlpruning["layers"]]
    assert all(0 < h < 12 for h in heads)

    blocks = MLPruner(packed, {"levels": ["blocks"], "target": 0.3})  # 32x32 blocks on the packed shapes
    q = blocks.one_shot(0.3)
    assert abs(q - 0.3) < 0.03
    masked2 = hidden(packed, x)
    out = blocks.save_packed(str(tmp_path / "minilm-packed"), tokenizer=minilm_dir)
    loaded = load_packed(out)
    assert any(isinstance(m, BlockSparseLinear) for m in loaded.modules())
    assert torch.allclose(hidden(loaded, x), masked2, atol=1e-4, rtol=1e-4)
    assert loaded.config.mlpruning["remaining_fraction"] == pytest.approx(q)
    assert AutoTokenizer.from_pretrained(out)(TEXTS[0])["input_ids"] == tok(TEXTS[0])["input_ids"]
