"""save_packed / load_packed: an HF-style folder that reloads to the same outputs, with fewer parameters."""
import json
import os

import pytest
import torch

from sparse.mlpruning import MLPruner, is_packed_folder, load_packed, save_packed
from sparse.nn import BlockSparseLinear

FAMILIES = ("bert", "distilbert", "roberta")


def logits(model, x):
    with torch.no_grad():
        return model(**x).logits


def n_params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("family", FAMILIES)
def test_round_trip_same_outputs_fewer_parameters(tmp_path, tiny, inputs, randomise, family):
    model = tiny(family)
    x = inputs()
    pruner = MLPruner(model, {"levels": ["heads", "rows"], "row_multiple": 16})
    randomise(pruner)
    pruner.one_shot(0.5)
    pruner.units["layer1_heads"].topk.set_count(0)  # a headless layer must survive the round trip too
    masked = logits(model, x)
    out = pruner.save_packed(str(tmp_path / "packed"))
    assert is_packed_folder(out) and sorted(os.listdir(out)) == ["config.json", "model.safetensors"]
    loaded = load_packed(out)
    assert type(loaded) is type(model)
    assert torch.allclose(logits(loaded, x), masked, atol=1e-5, rtol=1e-4)
    assert n_params(loaded) < n_params(model)
    with open(os.path.join(out, "config.json")) as f:
        record = json.load(f)["mlpruning"]
    assert [lr["heads"] for lr in record["layers"]] == [pruner.units["layer0_heads"].topk.count(), 0]
    assert record["layers"][0]["intermediate_size"] == pruner.units["layer0_ffn_in_rows"].topk.count()
    # second stage on the loaded model: blocks, then another round trip
    second = MLPruner(loaded, {"levels": ["blocks"], "block": [16, 16], "target": 0.3})
    randomise(second, seed=2)
    second.one_shot(0.3)
    masked2 = logits(loaded, x)
    out2 = second.save_packed(str(tmp_path / "stage2"))
    loaded2 = load_packed(out2)
    assert any(isinstance(m, BlockSparseLinear) for m in loaded2.modules())
    assert torch.allclose(logits(loaded2, x), masked2, atol=1e-5, rtol=1e-4)


def test_tokenizer_files_are_copied(tmp_path, tiny, minilm_dir):
    pruner = MLPruner(tiny("bert"), {"levels": ["heads"]})
    pruner.one_shot(0.6)
    out = pruner.save_packed(str(tmp_path / "p"), tokenizer=minilm_dir)
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        assert os.path.isfile(os.path.join(out, name))
    with pytest.raises(ValueError, match="tokenizer"):
        pruner.save_packed(str(tmp_path / "q"), tokenizer=str(tmp_path))


def test_bf16_round_trip_keeps_dtype(tmp_path, tiny, inputs):
    model = tiny("bert").to(torch.bfloat16)
    pruner = MLPruner(model, {"levels": ["heads", "rows"]})
    pruner.one_shot(0.5)
    packed = pruner.pack()
    save_packed(packed, tmp_path / "p")
    loaded = load_packed(tmp_path / "p")
    assert next(loaded.parameters()).dtype == torch.bfloat16
    x = inputs()
    assert torch.equal(logits(loaded, x), logits(packed, x))


def test_existing_folder_refused_without_force(tmp_path, tiny):
    pruner = MLPruner(tiny("bert"), {"levels": ["heads"]})
    out = pruner.save_packed(str(tmp_path / "p"))
    with pytest.raises(FileExistsError):
        pruner.save_packed(out)
    pruner.save_packed(out, force=True)
    assert is_packed_folder(out)


def test_not_packed_inputs(tmp_path, tiny):
    model = tiny("bert")
    with pytest.raises(ValueError, match="model: not a packed"):
        save_packed(model, tmp_path / "x")
    model.save_pretrained(tmp_path / "plain")
    with pytest.raises(ValueError, match="not a packed MLPruning folder"):
        load_packed(tmp_path / "plain")
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_packed(tmp_path / "missing")
    assert not is_packed_folder(tmp_path / "plain")


def test_malformed_record_is_a_clear_error(tmp_path, tiny):
    pruner = MLPruner(tiny("bert"), {"levels": ["heads"]})
    out = pruner.save_packed(str(tmp_path / "p"))
    path = os.path.join(out, "config.json")
    with open(path) as f:
        cfg = json.load(f)
    cfg["mlpruning"]["layers"][0]["heads"] = -1
    with open(path, "w") as f:
        json.dump(cfg, f)
    with pytest.raises(ValueError, match=r"mlpruning.layers\[0\].heads"):
        load_packed(out)


def test_sparse_inspect_describes_a_packed_folder(tmp_path, tiny, randomise, capsys):
    from sparse.cli import main

    pruner = MLPruner(tiny("bert"), {"levels": ["heads", "rows"], "rows": ["ffn_in"]})
    randomise(pruner)
    pruner.units["layer0_heads"].topk.set_count(3)
    pruner.units["layer1_heads"].topk.set_count(0)
    pruner.units["layer0_ffn_in_rows"].topk.set_count(100)
    out = pruner.save_packed(str(tmp_path / "p"))
    assert main(["inspect", out]) == 0
    text = capsys.readouterr().out
    assert "MLPruning packed bert model" in text and "3/4" in text and "100/128" in text
    assert "all attention heads pruned" in text
    assert main(["inspect", out, "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert [lr["heads"] for lr in got["mlpruning"]["layers"]] == [3, 0]
    assert got["mlpruning"]["layers"][0]["intermediate_size"] == 100
    assert any(t["name"].endswith("intermediate.dense.weight") and t["shape"] == [100, 64] for t in got["tensors"])
