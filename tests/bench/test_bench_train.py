"""``sparse bench train`` at tiny sizes (1-2 steps): records, the correctness gate, unavailable modes,
the breakdown, the plot. No timing assertions: only that the numbers exist, are typed and add up."""
import functools
import importlib.util
import json
import math

import pytest
import torch

from sparse.bench import train as T
from sparse.bench import train_modes as tm
from sparse.cli import main
from testkit import has_ext

TINY = ["--batch", "2", "--seq", "8", "--steps", "2", "--warmup", "1", "--threads", "1"]


@pytest.fixture
def tiny_layer(monkeypatch):
    """A BERT layer of hidden 64, FFN 128, 2 heads as ``--model tiny-bert-layer`` (blocks of 32 fit)."""
    monkeypatch.setitem(tm.MODELS, "tiny-bert-layer",
                        functools.partial(tm.build_bert_layer, hidden=64, ffn=128, heads=2))
    return "tiny-bert-layer"


def _run(tmp_path, argv, name="r.json"):
    out = tmp_path / name
    assert main(["bench", "train", *argv, "--json", str(out)]) == 0
    return json.loads(out.read_text())


def _by_mode(payload):
    return {r["mode"]: r for r in payload["records"]}


NUMBERS = ("forward_ms", "backward_ms", "optimizer_ms", "step_ms", "tokens_per_s", "speedup_vs_dense",
           "speedup_vs_dense_paired", "peak_mem_mb", "state_mem_mb", "infer_ms", "infer_speedup_vs_dense")


def test_mlp_records_are_complete_and_typed(tmp_path, capsys):
    payload = _run(tmp_path, ["--model", "mlp", "--modes", "2of4,block50", "--batch", "1", "--seq", "4",
                              "--steps", "1", "--warmup", "0", "--threads", "1"])
    recs = _by_mode(payload)
    assert list(recs) == ["dense", "2of4", "block50"]          # dense added first as the baseline
    for r in recs.values():
        assert r["correct"] is True and r["available"] is True
        for key in NUMBERS:
            assert isinstance(r[key], float) and r[key] > 0, key
        assert isinstance(r["backend"], str) and r["backend"]
        t = r["timings"]["step"]
        assert t["min_ms"] <= t["median_ms"] <= t["max_ms"] and len(t["times_ms"]) == 1
        assert r["step_ms"] == pytest.approx(r["forward_ms"] + r["backward_ms"] + r["optimizer_ms"])
        assert r["tokens_per_s"] == pytest.approx(4 / (r["step_ms"] / 1e3))
        assert set(r["breakdown"]) == set(T.KINDS)
        assert all(isinstance(v, float) and 0.0 <= v <= 1.0 for v in r["breakdown"].values())
        assert math.isclose(sum(r["breakdown"].values()), 1.0, rel_tol=1e-9)
        assert r["breakdown"]["linear"] > 0
        assert r["check"]["loss_rel_err"] <= r["check"]["tolerance"]["loss_rtol"]
    assert recs["dense"]["speedup_vs_dense"] == 1.0                # exactly: the same measurement
    assert recs["dense"]["infer_speedup_vs_dense"] == 1.0
    assert recs["block50"]["infer_speedup_vs_dense"] == pytest.approx(
        recs["dense"]["infer_ms"] / recs["block50"]["infer_ms"])
    assert len(recs["block50"]["timings"]["inference"]["times_ms"]) == 1
    assert recs["dense"]["speedup_vs_dense_paired"] == 1.0
    assert recs["block50"]["speedup_vs_dense"] == pytest.approx(recs["dense"]["step_ms"] / recs["block50"]["step_ms"])
    assert "no speed claim" in recs["2of4"]["note"]
    if has_ext():
        assert recs["block50"]["backend"] == "csrc-cpu" and recs["block50"]["kernel_family"]
    m = payload["machine"]
    assert isinstance(m["cpu_model"], str) and m["cpu_model"]
    assert m["threads"] == 1 and m["torch"] == torch.__version__ and isinstance(m["kernel_family"], str)
    assert payload["config"]["model"] == "mlp"
    out = capsys.readouterr().out
    assert "block50" in out and "step breakdown" in out and m["cpu_model"] in out


def test_every_mode_family_on_a_tiny_bert_layer_fp32(tmp_path, tiny_layer):
    payload = _run(tmp_path, ["--model", tiny_layer, "--modes", "dense,2of4-t,4of8-t,block90,mlpruned50",
                              "--dtype", "fp32", *TINY])
    recs = _by_mode(payload)
    for name in ("dense", "2of4-t", "4of8-t", "block90"):
        assert recs[name]["correct"] is True, recs[name]["check"]
        assert recs[name]["check"]["tolerance"]["grad_rtol"] == T.TOLERANCES["fp32"].grad_rtol
        assert len(recs[name]["timings"]["forward"]["times_ms"]) == 2
    r = recs["mlpruned50"]   # MLPruner takes whole HF encoders, not a lone layer
    assert r["available"] is False and r["correct"] is None and r["step_ms"] is None
    assert isinstance(r["unavailable"], str) and "--model minilm" in r["unavailable"]
    assert r["note"].startswith("unavailable: ")
    assert payload["model"]["targets"] == ["attention.self.query", "attention.self.key", "attention.self.value",
                                           "attention.output.dense", "intermediate.dense", "output.dense"]


def _perturbing(builder):
    def build(mode, work, device):
        prep = builder(mode, work, device)
        with torch.no_grad():
            for p in prep.model.parameters():
                if p.dim() >= 2:   # dense weights and block data: noise of 20 % of the mean |w|
                    p.add_(0.2 * p.abs().mean() * torch.randn_like(p))
        return prep
    return build


@pytest.mark.parametrize("kind,mode", [("block", "block50"), ("nm", "2of4")])
def test_a_wrong_kernel_is_reported_and_not_timed(tmp_path, tiny_layer, monkeypatch, kind, mode):
    monkeypatch.setitem(tm.BUILDERS, kind, _perturbing(tm.BUILDERS[kind]))
    payload = _run(tmp_path, ["--model", tiny_layer, "--modes", f"dense,{mode}", *TINY])
    recs = _by_mode(payload)
    bad = recs[mode]
    assert bad["correct"] is False and bad["note"].startswith("WRONG")
    assert bad["check"]["problems"]
    for key in ("forward_ms", "backward_ms", "optimizer_ms", "step_ms", "timings", "speedup_vs_dense",
                "breakdown", "peak_mem_mb"):
        assert bad[key] is None, key
    assert recs["dense"]["correct"] is True and isinstance(recs["dense"]["step_ms"], float)


def test_check_passes_the_kernel_and_fails_a_perturbed_model_in_bf16(tiny_layer):
    """Directly: the check passes the real block-sparse model and fails a perturbed one."""
    dev = torch.device("cpu")
    work = tm.MODELS[tiny_layer](2, 8, dev)
    mode = tm.parse_mode("block50")
    masks = tm.reference_masks(mode, work)
    assert T.check_mode(tm.build(mode, work, dev), work, masks, dev, "bf16")["correct"]
    prep = _perturbing(tm.BUILDERS["block"])(mode, work, dev)
    assert not T.check_mode(prep, work, masks, dev, "bf16")["correct"]


def test_unknown_mode_is_a_clear_error(capsys):
    assert main(["bench", "train", "--model", "mlp", "--modes", "dense,block50,3of2,sparse"]) == 2
    err = capsys.readouterr().err
    assert "unknown mode '3of2'" in err and "valid modes: dense" in err and "blockNN" in err
    with pytest.raises(ValueError, match="unknown mode 'block100'"):
        tm.parse_mode("block100")
    assert tm.parse_mode("4of8-t") == tm.Mode("4of8-t", "nm", n=4, m=8, transposable=True)
    assert tm.parse_mode("mlpruned50-ffn") == tm.Mode("mlpruned50-ffn", "mlpruned", sparsity=0.5, rows=("ffn_in",))
    for bad in ("mlpruned100-ffn", "mlpruned50-attn", "block50-ffn"):
        with pytest.raises(ValueError, match=f"unknown mode '{bad}'.*mlprunedNN-ffn"):
            tm.parse_mode(bad)


def test_a_mode_that_does_not_fit_the_model_is_unavailable_with_the_reason(tmp_path, tiny_layer):
    recs = _by_mode(_run(tmp_path, ["--model", tiny_layer, "--modes", "3of5", *TINY]))
    assert recs["3of5"]["available"] is False
    assert "not divisible by m=5" in recs["3of5"]["unavailable"]
    assert recs["dense"]["correct"] is True


def test_fast_dropout_is_applied_to_every_timed_model(tmp_path, tiny_layer, monkeypatch):
    import sparse.nn

    calls = []
    monkeypatch.setattr(sparse.nn, "use_fast_dropout", lambda model, enabled=True: calls.append(enabled),
                        raising=False)
    payload = _run(tmp_path, ["--model", tiny_layer, "--modes", "dense,block50", *TINY])
    assert calls == [True, True] and payload["fast_dropout"] is True
    calls.clear()
    payload = _run(tmp_path, ["--model", tiny_layer, "--modes", "dense", "--no-fast-dropout", *TINY], "s.json")
    assert calls == [] and payload["fast_dropout"] is False


def test_no_dropout_times_every_model_without_dropout(tmp_path, tiny_layer, monkeypatch):
    import sparse.nn

    fast, removed = [], []
    monkeypatch.setattr(sparse.nn, "use_fast_dropout", lambda model, enabled=True: fast.append(enabled),
                        raising=False)
    real = tm.remove_dropout
    monkeypatch.setattr(tm, "remove_dropout", lambda model: removed.append((real(model), model)) or removed[-1][0])
    payload = _run(tmp_path, ["--model", tiny_layer, "--modes", "dense,block50", "--no-dropout", *TINY])
    assert fast == [] and payload["no_dropout"] is True and payload["fast_dropout"] is False
    assert "no dropout" in payload["dropout"]
    assert [n for n, _ in removed] == [3, 3]  # attention probabilities, attention output, FFN output
    for _, model in removed:
        assert all(m.p == 0 for m in model.modules() if isinstance(m, torch.nn.Dropout))
    assert all(r["correct"] for r in payload["records"])


def test_dropout_paths_time_every_mode_on_each_path_in_one_run(tmp_path, tiny_layer, monkeypatch):
    import sparse.nn

    fast, removed = [], []
    real_fast = sparse.nn.use_fast_dropout
    monkeypatch.setattr(sparse.nn, "use_fast_dropout",
                        lambda model, enabled=True: fast.append(model) or real_fast(model, enabled))
    real = tm.remove_dropout
    monkeypatch.setattr(tm, "remove_dropout", lambda model: removed.append(model) or real(model))
    payload = _run(tmp_path, ["--model", tiny_layer, "--modes", "dense,block50", "--dropout-paths",
                              "fast,torch,none,fast", *TINY])
    assert payload["dropout_paths"] == ["fast", "torch", "none"]
    recs = _by_mode(payload)
    assert list(recs) == [f"{m}/{p}" for m in ("dense", "block50") for p in ("fast", "torch", "none")]
    assert len(fast) == 2 and len(removed) == 2 and not set(map(id, fast)) & set(map(id, removed))
    for name, r in recs.items():
        mode, path = name.split("/")
        assert r["dropout_path"] == path and r["correct"] and r["step_ms"] > 0
        assert len(r["timings"]["step"]["times_ms"]) == 2
        torch_rec = recs[f"{mode}/torch"]
        # the same arithmetic as the record's own timings, whatever they are
        assert r["speedup_vs_torch_dropout"] == pytest.approx(torch_rec["step_ms"] / r["step_ms"])
        ratios = [a / b for a, b in zip(torch_rec["timings"]["step"]["times_ms"], r["timings"]["step"]["times_ms"])]
        assert r["speedup_vs_torch_dropout_paired"] == pytest.approx(sum(ratios) / 2)  # median of 2 rounds
        dense = recs[f"dense/{path}"]  # vs dense on the same dropout path
        assert r["speedup_vs_dense"] == pytest.approx(dense["step_ms"] / r["step_ms"])
    assert "fast,torch,none" in payload["dropout"] and "no dropout (every dropout at p = 0" in payload["dropout"]


@pytest.mark.parametrize("argv, message", [
    (["--dropout-paths", "fast,bogus"], "--dropout-paths: expected a comma list of fast, torch, none; got 'bogus'"),
    (["--dropout-paths", "fast,torch", "--no-dropout"], "--dropout-paths: give the paths there"),
])
def test_bad_dropout_paths_are_clear_errors(tiny_layer, argv, message, capsys):
    assert main(["bench", "train", "--model", tiny_layer, "--modes", "dense", *argv, *TINY]) == 2
    assert message in capsys.readouterr().err


def test_remove_dropout_makes_training_mode_deterministic():
    from transformers import BertConfig
    from transformers.models.bert.modeling_bert import BertLayer

    torch.manual_seed(0)
    layer = BertLayer(BertConfig(hidden_size=32, intermediate_size=64, num_attention_heads=2,
                                 hidden_dropout_prob=0.5, attention_probs_dropout_prob=0.5)).train()
    x = torch.randn(2, 5, 32)
    assert not torch.equal(layer(x)[0], layer(x)[0])
    assert tm.remove_dropout(layer) == 3 and tm.remove_dropout(layer) == 0
    assert torch.equal(layer(x)[0], layer(x)[0])
    assert torch.allclose(layer(x)[0], layer.eval()(x)[0])


def test_fast_dropout_missing_is_reported(tmp_path, tiny_layer, monkeypatch):
    import sparse.nn

    monkeypatch.delattr(sparse.nn, "use_fast_dropout", raising=False)
    monkeypatch.setattr(importlib.util, "find_spec",
                        functools.partial(_no_dropout_module, importlib.util.find_spec))
    payload = _run(tmp_path, ["--model", tiny_layer, "--modes", "dense", *TINY])
    assert payload["fast_dropout"] is False and "fast dropout unavailable" in payload["dropout"]


def _no_dropout_module(real, name, *a, **k):
    return None if name == "sparse.nn.dropout" else real(name, *a, **k)


@pytest.mark.parametrize("chain,kind", [
    (["aten::mul", "aten::dropout", "bench.forward"], "dropout"),
    (["aten::bernoulli_", "aten::dropout"], "dropout"),
    (["aten::copy_", "aten::_to_copy", "aten::to", "aten::linear", "bench.forward"], "copy"),
    (["aten::mm", "AddmmBackward0", T._BW + "AddmmBackward0", "bench.backward"], "linear"),
    (["aten::sum", "AddmmBackward0", T._BW + "AddmmBackward0"], "linear"),   # a Linear's bias gradient
    (["sparse::bs_sdd_rowsum", "GeneratedBackwardFor_sparse_bs_linear_defaultBackward"], "linear"),
    (["aten::bmm", "aten::matmul", "bench.forward"], "attention"),
    (["aten::mul_", "aten::_foreach_mul_", "Optimizer.step#AdamW.step", "bench.optimizer"], "optimizer"),
    (["aten::gelu_backward", T._BW + "GeluBackward0"], "elementwise"),
    (["aten::view", "bench.forward"], "other"),
])
def test_breakdown_kinds_by_explicit_table(chain, kind):
    assert T.classify(chain) == kind


def test_plot_writes_a_png(tmp_path, tiny_layer):
    png = tmp_path / "train.png"
    argv = ["bench", "train", "--model", tiny_layer, "--modes", "dense,block50", *TINY, "--plot", str(png)]
    if importlib.util.find_spec("matplotlib") is None:
        assert main(argv) == 2          # refused before any work, in one line
        assert not png.exists()
        pytest.skip("matplotlib not installed")
    assert main(argv) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.png"]   # no temporary left


def test_minilm_dense_block_and_mlpruned(tmp_path, minilm_dir, monkeypatch):
    """The real MiniLM: block90 and the packed MLPruning model pass the check (mlpruned against the
    pruner's masked model, on the gradients that kept their shape: embeddings, norms, head)."""
    argv = ["--model", "minilm", "--modes", "dense,block90,mlpruned50,mlpruned50-ffn", "--batch", "1", "--seq", "8",
            "--steps", "1", "--warmup", "0", "--threads", "1"]
    recs = _by_mode(_run(tmp_path, argv))
    for name in ("dense", "block90", "mlpruned50", "mlpruned50-ffn"):
        assert recs[name]["correct"] is True, recs[name]["check"]
        assert isinstance(recs[name]["step_ms"], float) and recs[name]["breakdown"]["linear"] > 0
    ml = recs["mlpruned50"]
    assert 0 < ml["check"]["compared_grads"] < recs["dense"]["check"]["compared_grads"]
    assert "remain" in ml["note"]
    # -ffn: heads and FFN rows only, so no residual-channel rows are scattered back and the FFN is narrower
    work = tm.MODELS["minilm"](1, 8, torch.device("cpu"))
    from sparse.mlpruning.pack import RowPrunedLinear

    both = {m: tm.build(tm.parse_mode(m), work, "cpu").model for m in ("mlpruned50", "mlpruned50-ffn")}
    assert any(isinstance(x, RowPrunedLinear) for x in both["mlpruned50"].modules())
    assert not any(isinstance(x, RowPrunedLinear) for x in both["mlpruned50-ffn"].modules())
    ffn_width = [layer.intermediate.dense.out_features for layer in both["mlpruned50-ffn"].bert.encoder.layer]
    assert max(ffn_width) < 1536 and "heads+FFN rows" in tm.parse_mode("mlpruned50-ffn").describe()
    # from_pretrained hands over an eval-mode model; the timed steps must train (dropout on)
    work = tm.MODELS["minilm"](1, 8, torch.device("cpu"))
    assert not work.model.training
    assert all(tm.build(tm.parse_mode(m), work, "cpu").model.training for m in ("dense", "block90", "mlpruned50"))
    monkeypatch.setitem(tm.BUILDERS, "mlpruned", _perturbing(tm.BUILDERS["mlpruned"]))
    argv[3] = "dense,mlpruned50"
    bad = _by_mode(_run(tmp_path, argv, "bad.json"))["mlpruned50"]
    assert bad["correct"] is False and bad["step_ms"] is None


def test_no_inference_leaves_inference_out(tmp_path):
    payload = _run(tmp_path, ["--model", "mlp", "--modes", "dense", "--batch", "1", "--seq", "4",
                              "--steps", "1", "--warmup", "0", "--threads", "1", "--no-inference"])
    rec = payload["records"][0]
    assert rec["infer_ms"] is None and "inference" not in rec["timings"] and isinstance(rec["step_ms"], float)


def test_packed_runs_head_row_and_block_stages(tmp_path, minilm_dir, monkeypatch):
    """``packed:DIR`` times a saved MLPruning model (as a fine-tune leaves it) against dense MiniLM:
    the head/row stage and the block stage (BlockSparseLinear) pass the check against the same model
    with its blocks expanded to dense; a perturbed one is refused; a wrong folder is a clear error."""
    from sparse.mlpruning import MLPruner, save_packed

    work = tm.MODELS["minilm"](1, 8, torch.device("cpu"))
    first = MLPruner(work.model, {"levels": ["heads", "rows"], "target": 0.5, "row_multiple": 32})
    first.one_shot(0.5)
    stage1 = first.pack()
    save_packed(stage1, tmp_path / "stage1")
    second = MLPruner(stage1, {"levels": ["blocks"], "block": [32, 32], "target": 0.3})
    second.one_shot(0.3)
    save_packed(second.pack(), tmp_path / "stage2")
    modes = f"dense,packed:{tmp_path / 'stage1'},packed:{tmp_path / 'stage2'}"
    argv = ["--model", "minilm", "--modes", modes, "--batch", "1", "--seq", "8", "--steps", "1", "--warmup", "0",
            "--threads", "1"]
    recs = list(_by_mode(_run(tmp_path, argv)).values())
    assert [r["kind"] for r in recs] == ["dense", "packed", "packed"]
    for r in recs:
        assert r["correct"] is True, r["check"]
        assert isinstance(r["step_ms"], float) and isinstance(r["infer_ms"], float)
    assert "remain" in recs[1]["note"] and "BlockSparseLinear" not in recs[1]["note"]
    assert "BlockSparseLinear" in recs[2]["note"]
    monkeypatch.setitem(tm.BUILDERS, "packed", _perturbing(tm.BUILDERS["packed"]))
    argv[3] = f"dense,packed:{tmp_path / 'stage2'}"
    bad = _by_mode(_run(tmp_path, argv, "bad.json"))[f"packed:{tmp_path / 'stage2'}"]
    assert bad["correct"] is False and bad["step_ms"] is None
    with pytest.raises(ValueError, match="packed MLPruning folder"):
        tm.parse_mode(f"packed:{tmp_path / 'nothing'}")
    with pytest.raises(ValueError, match="without one"):
        tm.parse_mode(f"packed:{minilm_dir}")


def test_eager_block_sparse_and_24_functions_count_as_linear():
    # the eager autograd paths show up under their Function class names in the profiler
    for name in ("_EagerLinear", "autograd::engine::evaluate_function: _EagerLinearBackward",
                 "_Linear24", "autograd::engine::evaluate_function: _Linear24Backward"):
        assert T.op_kind(name) == "linear", name
    assert T.classify(["aten::empty_strided", "_EagerLinear"]) == "linear"
