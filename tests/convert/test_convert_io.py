"""Conversion outputs: formats, names/dtypes/shapes kept, non-targets bit-identical, report numbers."""
import json
import os

import pytest
import torch
from safetensors.torch import load_file, save_file

from sparse.convert import convert_checkpoint
from sparse.convert.safetensors_io import SafetensorsReader, SafetensorsWriter, read_header
from sparse.masks import is_transposable, nm_mask, transposable_mask


def _sparse_weight(shape, density, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g)
    w[torch.rand(shape, generator=g) >= density] = 0
    return w.to(dtype)


def _state(seed=0):
    return {
        "encoder.0.attn.q.weight": _sparse_weight((16, 32), 0.5, seed=seed),
        "encoder.0.attn.q.bias": torch.randn(16),
        "encoder.0.ffn.weight": _sparse_weight((32, 16), 0.3, torch.bfloat16, seed=seed + 1),
        "encoder.0.norm.weight": torch.randn(16),
        "embeddings.word_embeddings.weight": torch.randn(12, 16),
        "conv.weight": _sparse_weight((8, 4, 3, 3), 0.6, torch.float16, seed=seed + 2),
        "classifier.weight": torch.randn(4, 16),
        "position_ids": torch.arange(8)[None],
    }


def _nonzero_groups_ok(w, n, m):
    nz = (w.reshape(w.shape[0], -1) != 0)
    return bool((nz.reshape(nz.shape[0], -1, m).sum(-1) <= n).all())


def test_safetensors_roundtrip_targets_and_untouched(tmp_path):
    sd = _state()
    src = tmp_path / "in.safetensors"
    save_file(sd, str(src), metadata={"format": "pt"})
    report = convert_checkpoint(src, tmp_path / "out.safetensors")
    out = load_file(str(tmp_path / "out.safetensors"))
    assert set(out) == set(sd)
    for k, v in sd.items():
        assert out[k].dtype == v.dtype and out[k].shape == v.shape
    converted = {t.name for t in report.tensors}
    assert converted == {"encoder.0.attn.q.weight", "encoder.0.ffn.weight", "conv.weight"}
    for k in set(sd) - converted:  # bit-identical
        assert torch.equal(out[k].view(torch.uint8) if out[k].is_floating_point() else out[k],
                           sd[k].view(torch.uint8) if sd[k].is_floating_point() else sd[k]), k
    for k in converted:
        w, o = sd[k], out[k]
        assert _nonzero_groups_ok(o, 2, 4)
        # kept entries keep their bits; pruned entries are +0 (no -0.0)
        keep = o != 0
        assert torch.equal(o[keep], w[keep])
        assert not torch.signbit(o[~keep]).any()
        # never turns a zero into a non-zero
        assert not ((w == 0) & (o != 0)).any()
        # identical to the mask engine applied to the whole tensor
        ref = torch.where(nm_mask(w.reshape(w.shape[0], -1), 2, 4), w.reshape(w.shape[0], -1), 0)
        assert torch.equal(o.reshape(o.shape[0], -1), ref)


def test_report_numbers_match_brute_force(tmp_path):
    sd = _state(seed=3)
    src = tmp_path / "in.safetensors"
    save_file(sd, str(src))
    report = convert_checkpoint(src, tmp_path / "out.safetensors", report_path=tmp_path / "r.json")
    out = load_file(str(tmp_path / "out.safetensors"))
    for t in report.tensors:
        w, o = sd[t.name].double(), out[t.name].double()
        assert t.nnz_before == int((w != 0).sum()) and t.nnz_after == int((o != 0).sum())
        assert t.newly_zeroed == int(((w != 0) & (o == 0)).sum())
        assert t.density_before == pytest.approx(float((w != 0).double().mean()))
        assert t.kept_nonzero_fraction == pytest.approx(float((o != 0).sum() / (w != 0).sum()))
        assert t.kept_magnitude_ratio == pytest.approx(float(o.abs().sum() / w.abs().sum()), rel=1e-5)
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["totals"]["newly_zeroed"] == sum(t.newly_zeroed for t in report.tensors)
    assert {t["name"] for t in saved["tensors"]} == {t.name for t in report.tensors}
    assert "TOTAL" in report.table()


def test_existing_sparsity_is_preferred():
    # A weight that is already 2:4 (2 non-zeros per group) keeps every non-zero exactly.
    from sparse.convert.prune import prune_tensor
    from sparse.pruning import NMPattern

    w = torch.randn(8, 16)
    w = torch.where(nm_mask(torch.rand(8, 16), 2, 4), w, 0)
    pruned, _, stats = prune_tensor(w, NMPattern(2, 4))
    assert torch.equal(pruned, w) and stats.newly_zeroed == 0 and stats.kept_nonzero == stats.nnz_before


def test_transposable_and_method_passthrough(tmp_path):
    w = _sparse_weight((16, 32), 0.7)
    save_file({"l.weight": w}, str(tmp_path / "in.safetensors"))
    rep = convert_checkpoint(tmp_path / "in.safetensors", tmp_path / "o.safetensors", transposable=True,
                             method="exact")
    o = load_file(str(tmp_path / "o.safetensors"))["l.weight"]
    ref = torch.where(transposable_mask(w, 2, 4, method="exact"), w, 0)
    assert torch.equal(o, ref) and is_transposable((o != 0) | transposable_mask(w, 2, 4), 2, 4)
    assert rep.tensors[0].kept_magnitude_ratio <= 1.0


def test_blocks_match_whole_tensor(monkeypatch):
    # Row blocks (a multiple of m rows for transposable) give the same mask as one call.
    import sparse.convert.prune as prune
    from sparse.pruning import parse_pattern

    monkeypatch.setattr(prune, "CHUNK_ELEMS", 64)
    w = _sparse_weight((24, 32), 0.6)
    for tr in (False, True):
        pruned, mask, _ = prune.prune_tensor(w, parse_pattern("2:4", transposable=tr))
        ref = transposable_mask(w, 2, 4) if tr else nm_mask(w, 2, 4)
        assert torch.equal(mask, ref) and torch.equal(pruned, torch.where(ref, w, 0))


def test_pt_input_and_output(tmp_path):
    sd = _state()
    torch.save(sd, tmp_path / "in.pt")
    convert_checkpoint(tmp_path / "in.pt", tmp_path / "out.bin")
    out = torch.load(tmp_path / "out.bin", weights_only=True)
    assert list(out) == list(sd)
    assert torch.equal(out["classifier.weight"], sd["classifier.weight"])
    assert _nonzero_groups_ok(out["encoder.0.attn.q.weight"], 2, 4)
    convert_checkpoint(tmp_path / "in.pt", tmp_path / "out.safetensors")
    assert torch.equal(load_file(str(tmp_path / "out.safetensors"))["encoder.0.ffn.weight"], out["encoder.0.ffn.weight"])


def test_sharded_index_mirrors_shards(tmp_path):
    sd = _state()
    names = list(sd)
    shard_a, shard_b = names[:4], names[4:]
    (tmp_path / "src").mkdir()
    save_file({k: sd[k] for k in shard_a}, str(tmp_path / "src" / "model-00001-of-00002.safetensors"))
    save_file({k: sd[k] for k in shard_b}, str(tmp_path / "src" / "model-00002-of-00002.safetensors"))
    index = {"metadata": {"total_size": 1}, "weight_map": {**{k: "model-00001-of-00002.safetensors" for k in shard_a},
                                                           **{k: "model-00002-of-00002.safetensors" for k in shard_b}}}
    (tmp_path / "src" / "model.safetensors.index.json").write_text(json.dumps(index))
    convert_checkpoint(tmp_path / "src" / "model.safetensors.index.json", tmp_path / "dst")
    assert sorted(os.listdir(tmp_path / "dst")) == sorted(os.listdir(tmp_path / "src"))
    out_b = load_file(str(tmp_path / "dst" / "model-00002-of-00002.safetensors"))
    assert set(out_b) == set(shard_b) and _nonzero_groups_ok(out_b["conv.weight"], 2, 4)
    assert json.loads((tmp_path / "dst" / "model.safetensors.index.json").read_text()) == index


def test_include_exclude(tmp_path):
    sd = _state()
    save_file(sd, str(tmp_path / "in.safetensors"))
    rep = convert_checkpoint(tmp_path / "in.safetensors", tmp_path / "a.safetensors", include=[r"classifier"])
    assert [t.name for t in rep.tensors] == ["classifier.weight"]
    rep = convert_checkpoint(tmp_path / "in.safetensors", tmp_path / "b.safetensors", exclude=[r"\.attn\."])
    assert {t.name for t in rep.tensors} == {"encoder.0.ffn.weight", "conv.weight"}
    with pytest.raises(ValueError, match="include"):
        convert_checkpoint(tmp_path / "in.safetensors", tmp_path / "c.safetensors", include=["("])


def test_streaming_writer_matches_reference(tmp_path):
    sd = {"a": torch.randn(3, 5), "b": torch.arange(7, dtype=torch.int64), "c": torch.randn(4).bfloat16(),
          "empty": torch.zeros(0, 3)}
    path = tmp_path / "w.safetensors"
    with open(path, "wb") as f:
        wr = SafetensorsWriter(f, [(k, v.dtype, tuple(v.shape)) for k, v in sd.items()], {"format": "pt"})
        for k, v in sd.items():
            flat = v.reshape(-1)
            half = flat.numel() // 2
            wr.write(k, flat[:half])  # chunked writes
            wr.write(k, flat[half:])
        wr.finish()
    got = load_file(str(path))
    for k, v in sd.items():
        assert torch.equal(got[k], v)
    with SafetensorsReader(str(path)) as r:
        assert torch.equal(r.tensor("a"), sd["a"]) and r.metadata == {"format": "pt"}
    infos, _, _ = read_header(str(path))
    assert [i.name for i in infos][:3] == ["a", "b", "c"]


def test_bad_arguments(tmp_path):
    save_file({"l.weight": torch.randn(4, 8)}, str(tmp_path / "in.safetensors"))
    src = tmp_path / "in.safetensors"
    with pytest.raises(ValueError, match="pattern"):
        convert_checkpoint(src, tmp_path / "o.safetensors", pattern="4:2")
    with pytest.raises(ValueError, match="pattern"):
        convert_checkpoint(src, tmp_path / "o.safetensors", pattern="2-4")
    with pytest.raises(ValueError, match="method"):
        convert_checkpoint(src, tmp_path / "o.safetensors", transposable=True, method="magic")
    with pytest.raises(ValueError, match="dst"):
        convert_checkpoint(src, tmp_path / "o.txt")
    with pytest.raises(ValueError, match="calibrate"):
        convert_checkpoint(src, tmp_path / "o.safetensors", calibrate=True)
    with pytest.raises(FileNotFoundError, match="src"):
        convert_checkpoint(tmp_path / "missing.safetensors", tmp_path / "o.safetensors")
    nan = torch.randn(4, 8)
    nan[0, 0] = float("nan")
    save_file({"l.weight": nan}, str(tmp_path / "nan.safetensors"))
    with pytest.raises(ValueError, match="l.weight.*finite"):
        convert_checkpoint(tmp_path / "nan.safetensors", tmp_path / "o.safetensors")
    assert not (tmp_path / "o.safetensors").exists()


def test_streamed_blocks_match_whole_tensor(tmp_path, monkeypatch):
    # Many small blocks through the double-buffered background writer give the same file.
    import sparse.convert.prune as prune

    monkeypatch.setattr(prune, "CHUNK_ELEMS", 128)
    sd = {"a.weight": _sparse_weight((40, 32), 0.6), "a.bias": torch.randn(40),
          "b.weight": _sparse_weight((16, 64), 0.4, torch.bfloat16, seed=5)}
    save_file(sd, str(tmp_path / "in.safetensors"))
    for tr in (False, True):
        dst = tmp_path / f"o{tr}.safetensors"
        convert_checkpoint(tmp_path / "in.safetensors", dst, transposable=tr)
        out = load_file(str(dst))
        for k in ("a.weight", "b.weight"):
            w = sd[k]
            ref = transposable_mask(w, 2, 4) if tr else nm_mask(w, 2, 4)
            assert torch.equal(out[k], torch.where(ref, w, 0)), (k, tr)
        assert torch.equal(out["a.bias"], sd["a.bias"])
