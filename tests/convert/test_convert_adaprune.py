"""AdaPrune calibration: fitted layers are N:M, their output error drops, and the reported error is real."""
import os

import pytest
import torch

from sparse.convert import convert_checkpoint
from sparse.convert.adaprune import AdaPruneConfig, GramCollector, cg_fit, lstsq_fit, mean_shift, relative_error
from sparse.masks import nm_mask

transformers = pytest.importorskip("transformers")
TEXTS = ["the markets rallied after the central bank held rates", "a late goal won the cup final for the home side",
         "the new phone has a faster chip and a larger screen", "parliament debated the budget until midnight",
         "the film festival opened with a documentary about jazz", "oil prices fell as supply rose"]


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory, save_tiny_bert):
    """A 1-layer random BERT saved as an HF folder, with the real MiniLM tokenizer files."""
    folder = tmp_path_factory.mktemp("tiny") / "hf"
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=64)
    model = transformers.BertModel(cfg).eval()
    with torch.no_grad():  # make it unstructured-sparse first
        for mod in model.modules():
            if isinstance(mod, torch.nn.Linear):
                mod.weight.mul_(torch.rand_like(mod.weight) > 0.3)
    return save_tiny_bert(model, folder)


def _capture(model, tok, fqn, texts, max_length):
    mod = dict(model.named_modules())[fqn]
    xs = []
    h = mod.register_forward_hook(lambda m, i, o: xs.append(i[0].detach()))
    enc = tok(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    with torch.no_grad():
        model(**enc)
    h.remove()
    keep = enc["attention_mask"].reshape(-1).bool()
    return xs[0].reshape(-1, xs[0].shape[-1])[keep]


@pytest.mark.parametrize("transposable", [False, True])
def test_calibrated_conversion_reduces_real_output_error(tiny_hf, tmp_path, transposable):
    from safetensors.torch import load_file

    cfg = AdaPruneConfig(num_texts=6, max_length=24, batch_size=4)
    out = tmp_path / "out"
    rep = convert_checkpoint(tiny_hf, out, transposable=transposable, calibrate=True, calibration=cfg,
                             calibration_texts=TEXTS)
    assert len(rep.calibration) == 6  # q, k, v, attention output, intermediate, output
    for c in rep.calibration:
        assert c.error_after < c.error_before and c.bias_updated
    src, dst = load_file(str(tiny_hf / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert set(src) == set(dst)
    calibrated = {c.name for c in rep.calibration} | {c.name[:-6] + "bias" for c in rep.calibration}
    for k in set(src) - calibrated:
        assert torch.equal(src[k], dst[k]), k
    for c in rep.calibration:
        w = dst[c.name]
        assert (w.reshape(w.shape[0], -1, 4) != 0).sum(-1).max() <= 2
    # The reported error is the layer's real relative output error on the calibration tokens.
    dense = transformers.AutoModel.from_pretrained(tiny_hf).eval()
    tok = transformers.AutoTokenizer.from_pretrained(tiny_hf)
    fqn = "encoder.layer.0.intermediate.dense"
    x = _capture(dense, tok, fqn, TEXTS, 24)
    layer = dict(dense.named_modules())[fqn]
    with torch.no_grad():
        y = layer(x)
    y_new = x @ dst[fqn + ".weight"].t() + dst[fqn + ".bias"]
    real = float((y_new - y).norm() / y.norm())
    reported = next(c for c in rep.calibration if c.name == fqn + ".weight").error_after
    assert real == pytest.approx(reported, rel=1e-3, abs=1e-5)
    # The converted folder loads with from_pretrained.
    transformers.AutoModel.from_pretrained(out)


def test_gram_collector_shares_inputs_and_skips_padding(tiny_hf):
    model = transformers.AutoModel.from_pretrained(tiny_hf).eval()
    tok = transformers.AutoTokenizer.from_pretrained(tiny_hf)
    names = ["encoder.layer.0.attention.self.query", "encoder.layer.0.attention.self.key",
             "encoder.layer.0.intermediate.dense"]
    mods = dict(model.named_modules())
    col = GramCollector({n: mods[n] for n in names})
    enc = tok(TEXTS[:3], padding=True, return_tensors="pt")
    col.batch(enc["attention_mask"])
    with torch.no_grad():
        model(**enc)
    col.close()
    assert col.key_of[names[1]] == names[0] and col.key_of[names[2]] == names[2]
    x = _capture(model, tok, names[0], TEXTS[:3], 512)
    xa = torch.cat([x, torch.ones(x.shape[0], 1)], 1).double()
    torch.testing.assert_close(col.gram(names[1], True), xa.t() @ xa, rtol=1e-5, atol=1e-4)
    assert col.tokens == int(enc["attention_mask"].sum())


def _problem(out=24, k=32, t=200, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(t, k, generator=g, dtype=torch.float64) @ torch.randn(k, k, generator=g, dtype=torch.float64)
    gram = x.t() @ x / t
    v0 = torch.randn(out, k, generator=g, dtype=torch.float64)
    mask = nm_mask(v0.float(), 2, 4)
    return v0, mask, gram


def test_cg_matches_exact_least_squares():
    v0, mask, g = _problem()
    exact = lstsq_fit(v0, mask, ~mask, g, 0.01, 7)
    cg = cg_fit(v0, mask, ~mask, g, 0.01, iters=300, tol=1e-7)
    torch.testing.assert_close(cg, exact, rtol=1e-3, atol=1e-4)
    assert (exact[~mask] == 0).all()
    masked = torch.where(mask, v0, 0)
    assert relative_error(exact, v0, g) < relative_error(masked, v0, g)
    # Optimality: no masked direction improves the exact fit.
    grad = ((exact - v0) @ (g + 0.01 * g.diagonal().mean() * torch.eye(g.shape[0], dtype=g.dtype)))[mask]
    grad_exact = ((exact - v0) @ g)[mask] + 0.01 * g.diagonal().mean() * (exact - v0)[mask]
    torch.testing.assert_close(grad, grad_exact)
    assert float(grad_exact.abs().max()) < 1e-3


def test_adam_and_mean_shift(tiny_hf, tmp_path):
    v0, mask, g = _problem(seed=1)
    w = v0.clone()
    shifted = mean_shift(w, mask, 2, 4)
    torch.testing.assert_close(shifted.reshape(24, -1, 4).sum(-1), w.reshape(24, -1, 4).sum(-1))
    assert (shifted[~mask] == 0).all()
    rep = convert_checkpoint(tiny_hf, tmp_path / "adam", calibrate=True, calibration_texts=TEXTS,
                             calibration=AdaPruneConfig(fit="adam", steps=30, add_pruned_mean=True, max_length=24))
    assert sum(c.error_after for c in rep.calibration) < sum(c.error_before for c in rep.calibration)


def test_config_validation():
    with pytest.raises(ValueError, match="fit"):
        AdaPruneConfig(fit="sgd")
    with pytest.raises(ValueError, match="num_texts"):
        AdaPruneConfig(num_texts=0)
    with pytest.raises(ValueError, match="damp"):
        AdaPruneConfig(damp=-1.0)


def test_real_minilm_convert_calibrated_loads(tmp_path, minilm_dir):
    """The real MiniLM folder converts (all 36 Linears; AdaPrune on layer 0 with a tiny calibration
    set, to stay fast) into a folder that from_pretrained loads."""
    src = minilm_dir
    rep = convert_checkpoint(src, tmp_path / "plain")
    assert len(rep.tensors) == 36 and rep.totals()["density_after"] == pytest.approx(0.5)
    assert sorted(os.listdir(tmp_path / "plain")) == sorted(os.listdir(src))
    out = tmp_path / "calibrated"
    rep = convert_checkpoint(src, out, include=[r"encoder\.layer\.0\..*weight$"], calibrate=True,
                             calibration_texts=TEXTS, calibration=AdaPruneConfig(num_texts=6, max_length=32,
                                                                                 cg_iters=5))
    assert len(rep.calibration) == 6
    assert all(c.error_after < c.error_before for c in rep.calibration)
    model = transformers.AutoModel.from_pretrained(out)
    w = model.encoder.layer[0].output.dense.weight
    assert (w.reshape(w.shape[0], -1, 4) != 0).sum(-1).max() <= 2
    assert (model.encoder.layer[1].output.dense.weight != 0).float().mean() > 0.9  # not a target here
