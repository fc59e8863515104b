"""SparseGPT / Wanda calibration: the OBS math, mask validity, source zeros, sequential runs, bad input."""
import os

import pytest
import torch

from sparse.convert import convert_checkpoint
from sparse.convert.calibration import CalibrationConfig, resolve_method
from sparse.convert.sparsegpt import inverse_hessian_factor, obs_column_update, sparsegpt_prune
from sparse.convert.wanda import wanda_prune
from sparse.masks import is_nm, is_transposable
from sparse.pruning.patterns import NMPattern, TransposableNMPattern, UnstructuredPattern

PATTERNS = [NMPattern(2, 4), TransposableNMPattern(2, 4), UnstructuredPattern(0.5)]
TEXTS = ["the markets rallied after the central bank held rates", "a late goal won the cup final for the home side",
         "the new phone has a faster chip and a larger screen", "parliament debated the budget until midnight",
         "the film festival opened with a documentary about jazz", "oil prices fell as supply rose"]


def _problem(seed=0, out=32, inp=64, tokens=512):
    """Weight ``[out, in]`` and inputs ``[tokens, in]`` with correlated features of unequal scale
    (as real activations have), fp32."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out, inp, generator=g)
    mix = torch.randn(inp, inp, generator=g) * 0.3 + torch.eye(inp)
    scale = torch.exp(torch.randn(inp, generator=g))
    x = (torch.randn(tokens, inp, generator=g) @ mix) * scale
    return w, x


def _err(w_new, w, x):
    return float((x @ (w_new - w).t()).norm() / (x @ w.t()).norm())


def _magnitude(w, pattern):
    return torch.where(pattern.mask(w), w, torch.zeros(()))


@pytest.mark.parametrize("pattern", PATTERNS, ids=lambda p: p.describe())
def test_sparsegpt_reconstructs_better_than_magnitude_and_wanda(pattern):
    w, x = _problem()
    h = x.t() @ x
    sg, mask = sparsegpt_prune(w, h, pattern)
    wd, _ = wanda_prune(w, h, pattern)
    e_sg, e_wd, e_mag = _err(sg, w, x), _err(wd, w, x), _err(_magnitude(w, pattern), w, x)
    assert pattern.valid(mask)
    assert bool((sg[~mask] == 0).all())
    assert e_sg < 0.9 * e_wd and e_sg < 0.9 * e_mag, (e_sg, e_wd, e_mag)
    assert e_wd < e_mag  # unequal feature scales: the activation norm helps


@pytest.mark.parametrize("pattern", PATTERNS, ids=lambda p: p.describe())
@pytest.mark.parametrize("prune", [sparsegpt_prune, wanda_prune], ids=["sparsegpt", "wanda"])
def test_masks_valid_and_source_zeros_stay_zero_unless_forced(pattern, prune):
    w, x = _problem(seed=1)
    g = torch.Generator().manual_seed(5)
    src = w * (torch.rand(w.shape, generator=g) > 0.5)  # 50 % unstructured source
    nz = src != 0
    new, mask = prune(src, x.t() @ x, pattern, src_nonzero=nz)
    assert mask.dtype == torch.bool and pattern.valid(mask)
    if isinstance(pattern, NMPattern):
        assert is_nm(mask, 2, 4)
    if isinstance(pattern, TransposableNMPattern):
        assert is_transposable(mask, 2, 4) and is_transposable(mask.t().contiguous(), 2, 4)
    if isinstance(pattern, UnstructuredPattern):
        assert int((~mask).sum()) == w.numel() // 2
    created = (new != 0) & ~nz
    if prune is wanda_prune:
        assert not bool(created.any())  # no update: a kept zero stays zero
    assert not bool((created & ~mask).any())
    # Kept source non-zeros: as many as the pattern allows, so a zero is kept only where forced.
    if isinstance(pattern, NMPattern):
        per_group = nz.reshape(w.shape[0], -1, 4).sum(-1)
        assert torch.equal((mask & nz).reshape(w.shape[0], -1, 4).sum(-1), per_group.clamp(max=2))
        forced = (per_group < 2).repeat_interleave(4, 1)
        assert not bool((created & ~forced).any())
    elif isinstance(pattern, TransposableNMPattern):
        best = TransposableNMPattern(2, 4, "exact").mask(nz.float())  # most non-zeros a valid mask can keep
        assert int((mask & nz).sum()) == int((best & nz).sum())
    elif prune is wanda_prune:  # per output row: a row keeps min(its non-zeros, its quota) non-zeros
        quota = w.shape[1] - w.shape[1] // 2
        assert torch.equal((mask & nz).sum(1), nz.sum(1).clamp(max=quota))
    else:  # SparseGPT, per block of columns (one block here): the same over the whole block
        assert int((mask & nz).sum()) == min(int(nz.sum()), w.numel() - w.numel() // 2)


def test_obs_update_matches_the_closed_form():
    """Rows whose first column is pruned get exactly the optimal-brain-surgeon update of all columns."""
    g = torch.Generator().manual_seed(3)
    w = torch.randn(64, 2, dtype=torch.float64, generator=g)
    x = torch.randn(200, 2, dtype=torch.float64, generator=g) @ torch.tensor([[1.0, 0.6], [0.0, 0.8]],
                                                                           dtype=torch.float64)
    h = x.t() @ x
    new, mask = sparsegpt_prune(w, h, NMPattern(1, 2), damp=0.0)
    rows = ~mask[:, 0]
    assert 0 < int(rows.sum()) < 64
    ref = obs_column_update(w[rows], h, 0, torch.zeros(int(rows.sum()), dtype=torch.float64))
    torch.testing.assert_close(new[rows].double(), ref, rtol=1e-4, atol=1e-5)
    # The mask is chosen by w^2 / U_cc^2, U the upper Cholesky factor of H^-1 (the reference's score;
    # U_00^2 = [H^-1]_00, U_11^2 = [H^-1]_11 conditioned on column 0); ties keep the lower index.
    u = torch.linalg.cholesky(torch.linalg.inv(h), upper=True)
    sal = w ** 2 / u.diagonal() ** 2
    assert torch.equal(mask[:, 0], sal[:, 0] >= sal[:, 1])
    # Kept columns of rows that pruned column 1 are unchanged (nothing comes after column 1).
    torch.testing.assert_close(new[~rows, 0].double(), w[~rows, 0], rtol=1e-6, atol=1e-6)


def test_obs_lazy_blocks_equal_one_block():
    w, x = _problem(seed=2, inp=96)
    h = x.t() @ x
    a, ma = sparsegpt_prune(w, h, NMPattern(2, 4), blocksize=8)
    b, mb = sparsegpt_prune(w, h, NMPattern(2, 4), blocksize=96)
    assert torch.equal(ma, mb)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_singular_h_and_bad_arguments_raise():
    w = torch.randn(8, 8)
    with pytest.raises(ValueError, match="singular even after damping"):
        sparsegpt_prune(w, torch.zeros(8, 8), NMPattern(2, 4), name="enc.fc.weight")
    with pytest.raises(ValueError, match="damp"):
        inverse_hessian_factor(torch.eye(8), -0.1)
    rank1 = torch.ones(8, 8)  # one token: rank 1, singular without damping
    with pytest.raises(ValueError, match=r"singular even after damping.*--damp"):
        sparsegpt_prune(w, rank1, NMPattern(2, 4), damp=0.0)
    with pytest.raises(ValueError, match="pattern"):
        sparsegpt_prune(w, torch.eye(8), "2:4")
    with pytest.raises(ValueError, match="divisible"):
        wanda_prune(torch.randn(8, 6), torch.eye(6), NMPattern(2, 4))
    with pytest.raises(ValueError, match=r"calibrate \(--calibrate\).*adaprune, sparsegpt, wanda.*'obs'"):
        resolve_method("obs")
    with pytest.raises(ValueError, match=r"max_length \(--seq-len\): expected an int >= 1, got 0"):
        CalibrationConfig(max_length=0)
    with pytest.raises(ValueError, match=r"num_texts \(--calibration-samples\)"):
        CalibrationConfig(num_texts=-1)


# ----------------------------------------------------------------------------- whole HF models
transformers = pytest.importorskip("transformers")


def _tiny(save_tiny_bert, folder, layers=2, sparsity=0.3, seed=0):
    torch.manual_seed(seed)
    cfg = transformers.BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=layers, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=64)
    model = transformers.BertModel(cfg).eval()
    if sparsity:
        with torch.no_grad():
            for mod in model.modules():
                if isinstance(mod, torch.nn.Linear):
                    mod.weight.mul_(torch.rand_like(mod.weight) > sparsity)
    return save_tiny_bert(model, folder)


@pytest.fixture(scope="module")
def tiny_sparse(tmp_path_factory, save_tiny_bert):
    return _tiny(save_tiny_bert, tmp_path_factory.mktemp("sgpt") / "hf")


def _weights(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


@pytest.mark.parametrize("method", ["sparsegpt", "wanda"])
def test_hf_conversion_sequential_and_not(tiny_sparse, tmp_path, method):
    cfg = CalibrationConfig(num_texts=6, max_length=24, batch_size=4)
    seq = convert_checkpoint(tiny_sparse, tmp_path / "seq", "2:4T", calibrate=method, calibration=cfg,
                             calibration_texts=TEXTS, sequential=True)
    flat = convert_checkpoint(tiny_sparse, tmp_path / "flat", "2:4T", calibrate=method, calibration=cfg,
                              calibration_texts=TEXTS, sequential=False)
    assert len(seq.calibration) == len(flat.calibration) == 12
    assert all(c.sequential for c in seq.calibration) and not any(c.sequential for c in flat.calibration)
    assert all(c.method == method for c in seq.calibration)
    src, a, b = _weights(tiny_sparse), _weights(tmp_path / "seq"), _weights(tmp_path / "flat")
    names = [c.name for c in seq.calibration]
    for name in names:
        assert is_transposable(a[name] != 0, 2, 4) or TransposableNMPattern(2, 4).conforms(a[name])
    # Block 0 sees the same inputs either way; block 1 sees the pruned block 0's outputs.
    first = [n for n in names if ".layer.0." in n]
    second = [n for n in names if ".layer.1." in n]
    assert all(torch.equal(a[n], b[n]) for n in first)
    err = {c.name: c.error_after for c in flat.calibration}
    assert all(c.error_after == pytest.approx(err[c.name], rel=1e-5) for c in seq.calibration if c.name in first)
    assert any(c.error_after != pytest.approx(err[c.name], rel=1e-5) for c in seq.calibration if c.name in second)
    if method == "sparsegpt":  # the OBS update depends on the inputs (Wanda's masks may coincide)
        assert any(not torch.equal(a[n], b[n]) for n in second)
    for k in set(src) - set(names):  # nothing else changes (no bias update)
        assert torch.equal(src[k], a[k]), k
    if method == "sparsegpt":
        assert sum(c.error_after for c in seq.calibration) < sum(c.error_before for c in seq.calibration)
    transformers.AutoModel.from_pretrained(tmp_path / "seq")


def test_refit_fits_the_sparsegpt_mask(tiny_sparse, tmp_path):
    import dataclasses

    cfg = CalibrationConfig(num_texts=6, max_length=24, batch_size=4)
    plain = convert_checkpoint(tiny_sparse, tmp_path / "a", "2:4", calibrate="sparsegpt", calibration=cfg,
                               calibration_texts=TEXTS, sequential=False)
    refit = convert_checkpoint(tiny_sparse, tmp_path / "b", "2:4", calibrate="sparsegpt", calibration_texts=TEXTS,
                               calibration=dataclasses.replace(cfg, refit=True), sequential=False)
    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    for p, r in zip(plain.calibration, refit.calibration):
        assert r.method == "sparsegpt+refit" and r.bias_updated
        assert r.error_after <= p.error_after + 1e-6
        assert torch.equal(a[p.name] != 0, b[p.name] != 0) or NMPattern(2, 4).conforms(b[p.name])
    with pytest.raises(ValueError, match="refit"):
        CalibrationConfig(refit="yes")


def test_dense_source_one_shot_and_report(tmp_path, save_tiny_bert):
    import json

    dense = _tiny(save_tiny_bert, tmp_path / "dense", layers=1, sparsity=0.0)
    rep = convert_checkpoint(dense, tmp_path / "out", "2:4", calibrate="sparsegpt", calibration_texts=TEXTS,
                             calibration=CalibrationConfig(num_texts=6, max_length=24), report_path=tmp_path / "r.json")
    out = _weights(tmp_path / "out")
    for c in rep.calibration:
        assert is_nm(out[c.name] != 0, 2, 4) or NMPattern(2, 4).conforms(out[c.name])
        assert c.error_after < c.error_before
    saved = json.loads((tmp_path / "r.json").read_text())
    assert {"error_before", "error_after", "method", "sequential"} <= set(saved["calibration"][0])
    assert saved["totals"]["calibration_mean_error_after"] < saved["totals"]["calibration_mean_error_before"]


def test_empty_calibration_file_and_non_hf_source(tiny_sparse, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    with pytest.raises(ValueError, match="calibration-file"):
        convert_checkpoint(tiny_sparse, tmp_path / "o", calibrate="sparsegpt", calibration_file=empty)
    with pytest.raises(ValueError, match="calibration_texts"):
        convert_checkpoint(tiny_sparse, tmp_path / "o2", calibrate="wanda", calibration_texts=["", " "])
    with pytest.raises(ValueError, match="sequential"):
        convert_checkpoint(tiny_sparse, tmp_path / "o3", sequential=True)
    with pytest.raises(ValueError, match="calibrate"):
        convert_checkpoint(tiny_sparse, tmp_path / "o4", calibrate="obs")
    assert not os.path.exists(tmp_path / "o") and not os.path.exists(tmp_path / "o4")


def test_torch_prune_checkpoint_converts_as_its_pruned_weights(tmp_path):
    import torch.nn.utils.prune as tprune

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4))
    for lin in (net[0], net[2]):
        tprune.l1_unstructured(lin, "weight", amount=0.5)
    sd = net.state_dict()
    assert "0.weight_orig" in sd and "0.weight_mask" in sd
    torch.save(sd, tmp_path / "pruned.pt")
    plain = {k: v for k, v in sd.items() if not k.endswith(("_orig", "_mask"))}
    plain.update({"0.weight": net[0].weight.detach().clone(), "2.weight": net[2].weight.detach().clone()})
    torch.save(plain, tmp_path / "plain.pt")
    convert_checkpoint(tmp_path / "pruned.pt", tmp_path / "a.pt", "2:4")
    convert_checkpoint(tmp_path / "plain.pt", tmp_path / "b.pt", "2:4")
    a = torch.load(tmp_path / "a.pt", weights_only=True)
    b = torch.load(tmp_path / "b.pt", weights_only=True)
    assert set(a) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_cli_calibrate_methods(tiny_sparse, tmp_path, capsys):
    from sparse.cli import main

    texts = tmp_path / "t.txt"
    texts.write_text("\n".join(TEXTS))
    rc = main(["convert", str(tiny_sparse), str(tmp_path / "o"), "--calibrate", "wanda", "--no-sequential",
               "--calibration-file", str(texts), "--calibration-samples", "4", "--seq-len", "16", "--no-progress"])
    assert rc == 0 and "err before" in capsys.readouterr().out
    for argv, words in (
            (["--calibrate", "sparsegpt", "--seq-len", "0"], ["--seq-len", ">= 1"]),
            (["--calibrate", "wanda", "--fit", "adam"], ["--fit", "only used with --calibrate adaprune"]),
            (["--calibrate", "sparsegpt", "--damp", "-1"], ["--damp", ">= 0"]),
            (["--sequential"], ["--sequential", "only used with --calibrate"]),
            (["--calibrate", "obs"], ["--calibrate", "adaprune, sparsegpt, wanda", "'obs'"])):
        rc = main(["convert", str(tiny_sparse), str(tmp_path / "x"), *argv, "--no-progress"])
        err = capsys.readouterr().err
        assert rc == 2 and all(w in err for w in words), (argv, err)


def test_reported_error_is_the_real_output_error(tmp_path, save_tiny_bert):
    """error_after is the layer's relative output error (bias included) on its calibration tokens."""
    src = _tiny(save_tiny_bert, tmp_path / "src", layers=1)
    rep = convert_checkpoint(src, tmp_path / "out", "2:4", calibrate="sparsegpt", calibration_texts=TEXTS,
                             calibration=CalibrationConfig(num_texts=6, max_length=24), sequential=False)
    model = transformers.AutoModel.from_pretrained(src).eval()
    tok = transformers.AutoTokenizer.from_pretrained(src)
    fqn = "encoder.layer.0.intermediate.dense"
    layer = dict(model.named_modules())[fqn]
    xs = []
    h = layer.register_forward_hook(lambda m, i, o: xs.append(i[0].detach()))
    enc = tok(TEXTS, padding=True, truncation=True, max_length=24, return_tensors="pt")
    with torch.no_grad():
        model(**enc)
    h.remove()
    x = xs[0].reshape(-1, xs[0].shape[-1])[enc["attention_mask"].reshape(-1).bool()]
    with torch.no_grad():
        y = layer(x)
    y_new = x @ _weights(tmp_path / "out")[fqn + ".weight"].t() + layer.bias.detach()
    reported = next(c for c in rep.calibration if c.name == fqn + ".weight").error_after
    assert float((y_new - y).norm() / y.norm()) == pytest.approx(reported, rel=1e-3, abs=1e-5)
