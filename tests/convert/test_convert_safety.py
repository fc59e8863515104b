"""Safety: SRC untouched, DST atomic, no clobbering, no code from pickles, clear errors on corrupt input."""
import hashlib
import os
import pickle

import pytest
import torch
from safetensors.torch import save_file

from sparse.convert import convert_checkpoint


def _digest(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def _src(tmp_path):
    w = torch.randn(8, 16)
    w[w.abs() < 0.5] = 0
    path = tmp_path / "in.safetensors"
    save_file({"l.weight": w, "l.bias": torch.randn(8)}, str(path))
    return path


def _leftovers(folder):
    return [n for n in os.listdir(folder) if n.startswith(".")]


def test_src_unchanged_and_no_clobber(tmp_path):
    src = _src(tmp_path)
    before = _digest(src)
    dst = tmp_path / "out.safetensors"
    convert_checkpoint(src, dst)
    assert _digest(src) == before
    first = _digest(dst)
    with pytest.raises(FileExistsError, match="force"):
        convert_checkpoint(src, dst, pattern="1:4")
    assert _digest(dst) == first
    convert_checkpoint(src, dst, pattern="1:4", force=True)
    assert _digest(dst) != first and _digest(src) == before
    with pytest.raises(ValueError, match="dst"):
        convert_checkpoint(src, src, force=True)
    assert _digest(src) == before and not _leftovers(tmp_path)


def test_dir_output_no_clobber_and_force(tmp_path):
    (tmp_path / "hf").mkdir()
    _src(tmp_path).rename(tmp_path / "hf" / "model.safetensors")
    (tmp_path / "hf" / "config.json").write_text("{}")
    convert_checkpoint(tmp_path / "hf", tmp_path / "out")
    assert sorted(os.listdir(tmp_path / "out")) == ["config.json", "model.safetensors"]
    with pytest.raises(FileExistsError):
        convert_checkpoint(tmp_path / "hf", tmp_path / "out")
    convert_checkpoint(tmp_path / "hf", tmp_path / "out", force=True)
    assert sorted(os.listdir(tmp_path / "out")) == ["config.json", "model.safetensors"]
    with pytest.raises(ValueError, match="dst"):
        convert_checkpoint(tmp_path / "hf", tmp_path / "hf" / "inner")
    assert not _leftovers(tmp_path)


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_code_running_pickle_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"l.weight": torch.randn(4, 8), "x": _Evil(str(marker))}, path)
    assert not marker.exists()
    with pytest.raises(ValueError, match="refusing to load"):
        convert_checkpoint(path, tmp_path / "out.pt")
    assert not marker.exists()
    assert not (tmp_path / "out.pt").exists() and not _leftovers(tmp_path)
    # A raw pickle (legacy format) with a payload is refused as well.
    raw = tmp_path / "raw.bin"
    raw.write_bytes(pickle.dumps(_Evil(str(marker))))
    with pytest.raises(ValueError, match=str(raw.name)):
        convert_checkpoint(raw, tmp_path / "out2.pt")
    assert not marker.exists()
    # The crafted files really are malicious: an unrestricted unpickle runs the payload.
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_truncated_safetensors_clear_error_no_output(tmp_path):
    src = _src(tmp_path)
    data = src.read_bytes()
    for cut in (4, 20, len(data) - 5):
        bad = tmp_path / f"cut{cut}.safetensors"
        bad.write_bytes(data[:cut])
        with pytest.raises(ValueError, match="corrupt or truncated"):
            convert_checkpoint(bad, tmp_path / "out.safetensors")
        assert not (tmp_path / "out.safetensors").exists()
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    with pytest.raises(ValueError, match="JSON"):
        convert_checkpoint(garbage, tmp_path / "out.safetensors")
    assert not _leftovers(tmp_path)


def test_corrupt_pt_and_non_state_dict(tmp_path):
    good = tmp_path / "good.pt"
    torch.save({"l.weight": torch.randn(4, 8)}, good)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(good.read_bytes()[:200])
    with pytest.raises(ValueError, match="corrupt or truncated"):
        convert_checkpoint(bad, tmp_path / "o.pt")
    nested = tmp_path / "nested.pt"
    torch.save({"model": {"l.weight": torch.randn(4, 8)}, "epoch": 3}, nested)
    with pytest.raises(ValueError, match="flat state dict"):
        convert_checkpoint(nested, tmp_path / "o.pt")
    assert not (tmp_path / "o.pt").exists() and not _leftovers(tmp_path)


def test_failure_midway_leaves_no_partial_output(tmp_path):
    w = torch.randn(8, 16)
    nan = torch.randn(8, 16)
    nan[3, 3] = float("inf")
    save_file({"a.weight": w, "z.weight": nan}, str(tmp_path / "in.safetensors"))
    with pytest.raises(ValueError, match="z.weight"):
        convert_checkpoint(tmp_path / "in.safetensors", tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists() and not _leftovers(tmp_path)
    (tmp_path / "hf").mkdir()
    (tmp_path / "in.safetensors").rename(tmp_path / "hf" / "model.safetensors")
    with pytest.raises(ValueError):
        convert_checkpoint(tmp_path / "hf", tmp_path / "out")
    assert not (tmp_path / "out").exists() and not _leftovers(tmp_path)


def test_bad_shard_index(tmp_path):
    (tmp_path / "model.safetensors.index.json").write_text('{"weight_map": {"a": "../escape.safetensors"}}')
    with pytest.raises(ValueError, match="relative path"):
        convert_checkpoint(tmp_path / "model.safetensors.index.json", tmp_path / "out")
    (tmp_path / "model.safetensors.index.json").write_text('{"weight_map": {"a": "missing.safetensors"}}')
    with pytest.raises(FileNotFoundError, match="missing"):
        convert_checkpoint(tmp_path / "model.safetensors.index.json", tmp_path / "out")
    (tmp_path / "model.safetensors.index.json").write_text("[1,2")
    with pytest.raises(ValueError, match="corrupt shard index"):
        convert_checkpoint(tmp_path / "model.safetensors.index.json", tmp_path / "out")


# ----------------------------------------------------------------------------- non-fp32 weights
@pytest.mark.parametrize("transposable", [False, True], ids=["nm", "transposable"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("fmt", ["safetensors", "pt"])
def test_float_dtypes_convert_in_their_own_dtype(tmp_path, dtype, transposable, fmt):
    """fp64 once crashed (the magnitude sums asked vector_norm to narrow to fp32); every float dtype
    converts to a valid mask, keeps its dtype and the kept values' bits."""
    from sparse.masks import is_nm, is_transposable

    g = torch.Generator().manual_seed(1)
    w = torch.randn(16, 32, generator=g, dtype=torch.float64).to(dtype)  # no zeros: exactly 2 kept per group
    src, dst = tmp_path / f"in.{fmt}", tmp_path / f"out.{fmt}"
    if fmt == "pt":
        torch.save({"l.weight": w}, src)
    else:
        save_file({"l.weight": w}, str(src))
    rep = convert_checkpoint(src, dst, transposable=transposable)
    out = torch.load(dst, weights_only=True)["l.weight"] if fmt == "pt" else _load(dst)["l.weight"]
    assert out.dtype == dtype and out.shape == w.shape
    mask = out != 0
    assert is_nm(mask, 2, 4) and (not transposable or is_transposable(mask, 2, 4))
    assert torch.equal(out[mask], w[mask]) and bool((mask <= (w != 0)).all())
    t = rep.tensors[0]
    assert t.dtype == str(dtype).replace("torch.", "")
    # kept magnitude, in float64, as the report says; a plain N:M mask keeps each group's top 2
    kept = float(w.double().abs()[mask].sum())
    assert t.abs_kept == pytest.approx(kept, rel=1e-3) and t.abs_before == pytest.approx(float(w.double().abs().sum()),
                                                                                          rel=1e-3)
    if not transposable:
        best = float(w.double().abs().reshape(16, 8, 4).topk(2, -1).values.sum())
        assert kept == pytest.approx(best, rel=1e-12)


def _load(path):
    from safetensors.torch import load_file

    return load_file(str(path))


# ------------------------------------------------------- outputs never overwrite inputs or each other
@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if the conversion (or the calibration) starts: refusals come before any work."""
    import sparse.convert.api as api
    import sparse.convert.calibration as calibration

    def started(*a, **k):
        raise AssertionError("work started before the paths were checked")
    monkeypatch.setattr(api, "_convert_shard", started)
    monkeypatch.setattr(calibration, "calibrate_hf_folder", started)


def _hf(tmp_path, name="hf"):
    folder = tmp_path / name
    folder.mkdir()
    _src(tmp_path).rename(folder / "model.safetensors")
    (folder / "config.json").write_text("{}")
    return folder


def test_report_equal_to_dst_is_refused_before_work(tmp_path, no_work):
    src = _src(tmp_path)
    dst = tmp_path / "out.safetensors"
    for report in (dst, tmp_path / "." / "out.safetensors", os.path.relpath(dst)):
        for force in (False, True):
            with pytest.raises(ValueError, match=r"report_path \(--report\): .* is the same file as dst"):
                convert_checkpoint(src, dst, report_path=report, force=force)
    assert sorted(os.listdir(tmp_path)) == ["in.safetensors"]


def test_report_or_dst_naming_an_input_is_refused_even_with_force(tmp_path, no_work):
    src = _src(tmp_path)
    before = _digest(src)
    link = tmp_path / "link.safetensors"
    link.symlink_to(src)
    hard = tmp_path / "hard.safetensors"
    os.link(src, hard)
    for report in (src, link, hard, tmp_path / "sub" / ".." / "in.safetensors"):
        with pytest.raises(ValueError, match=r"report_path \(--report\): .* is the same file as src"):
            convert_checkpoint(src, tmp_path / "out.safetensors", report_path=report, force=True)
    for dst in (link, hard, os.path.relpath(src)):
        with pytest.raises(ValueError, match="dst: .* is the same file as src"):
            convert_checkpoint(src, dst, force=True)
    assert _digest(src) == before and not (tmp_path / "out.safetensors").exists()


def test_report_inside_the_dst_folder_is_refused(tmp_path, no_work):
    """DST holds exactly what the conversion writes: the report goes next to it, not into it (into
    the temporary folder it would vanish; over a converted file it would replace it)."""
    hf = _hf(tmp_path)
    for name in ("report.json", "config.json", "model.safetensors"):
        with pytest.raises(ValueError, match=r"report_path \(--report\): .* lies inside dst .*two outputs"):
            convert_checkpoint(hf, tmp_path / "out", report_path=tmp_path / "out" / name)
    (tmp_path / "out").mkdir()
    with pytest.raises(ValueError, match="lies inside dst"):
        convert_checkpoint(hf, tmp_path / "out", report_path=tmp_path / "out" / "r.json", force=True)
    # a file DST: a report "inside" it has a file for a folder
    with pytest.raises(ValueError, match="lies inside dst"):
        convert_checkpoint(hf / "model.safetensors", tmp_path / "o.safetensors",
                           report_path=tmp_path / "o.safetensors" / "r.json")


def test_outputs_inside_an_input_folder_or_shard_are_refused(tmp_path, no_work):
    hf = _hf(tmp_path)
    with pytest.raises(ValueError, match=r"report_path \(--report\): .* lies inside src"):
        convert_checkpoint(hf, tmp_path / "out", report_path=hf / "r.json")
    # a sharded index: its shards are inputs too
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    save_file({"a.weight": torch.randn(4, 8)}, str(sharded / "s1.safetensors"))
    save_file({"b.weight": torch.randn(4, 8)}, str(sharded / "s2.safetensors"))
    index = sharded / "model.safetensors.index.json"
    index.write_text('{"weight_map": {"a.weight": "s1.safetensors", "b.weight": "s2.safetensors"}}')
    before = _digest(sharded / "s2.safetensors")
    shard = r"report_path \(--report\): .* is the same file as src shard 's2\.safetensors'"
    with pytest.raises(ValueError, match=shard):
        convert_checkpoint(index, tmp_path / "out", report_path=sharded / "s2.safetensors", force=True)
    with pytest.raises(ValueError, match="dst: .* contains src"):
        convert_checkpoint(index, sharded, force=True)
    assert _digest(sharded / "s2.safetensors") == before


def test_calibration_file_is_an_input(tmp_path, no_work):
    hf = _hf(tmp_path)
    texts = tmp_path / "texts.txt"
    texts.write_text("one text\n")
    for kw in ({"report_path": texts}, {"report_path": tmp_path / "x" / ".." / "texts.txt"}):
        with pytest.raises(ValueError, match=r"report_path \(--report\): .* is the same file as calibration_file "
                                             r"\(--calibration-file\)"):
            convert_checkpoint(hf, tmp_path / "out", calibrate=True, calibration_file=texts, force=True, **kw)
    with pytest.raises(ValueError, match=r"dst: .* is the same file as calibration_file"):
        convert_checkpoint(hf, texts, calibrate=True, calibration_file=texts, force=True)
    with pytest.raises(ValueError, match=r"calibration_file \(--calibration-file\): only used with calibrate"):
        convert_checkpoint(hf, tmp_path / "out", calibration_file=texts)
    with pytest.raises(ValueError, match="not both"):
        convert_checkpoint(hf, tmp_path / "out", calibrate=True, calibration_file=texts, calibration_texts=["a"])
    assert texts.read_text() == "one text\n"


def test_a_report_next_to_the_outputs_is_written(tmp_path):
    src = _src(tmp_path)
    convert_checkpoint(src, tmp_path / "out.safetensors", report_path=tmp_path / "r.json")
    assert sorted(os.listdir(tmp_path)) == ["in.safetensors", "out.safetensors", "r.json"]
    hf = _hf(tmp_path, "hf")
    convert_checkpoint(hf, tmp_path / "out", report_path=tmp_path / "out.json")
    assert sorted(os.listdir(tmp_path / "out")) == ["config.json", "model.safetensors"]
    # next to a sharded index is not inside an input: the index and its shards are the inputs
    index = hf / "model.safetensors.index.json"
    index.write_text('{"weight_map": {"l.weight": "model.safetensors", "l.bias": "model.safetensors"}}')
    convert_checkpoint(index, tmp_path / "out2", report_path=hf / "r.json")
    assert (hf / "r.json").is_file() and sorted(os.listdir(tmp_path / "out2")) == [
        "model.safetensors", "model.safetensors.index.json"]


def test_outputs_onto_hub_cache_blobs_are_refused(tmp_path, no_work):
    """A hub-cache snapshot's files are links into ``blobs/``: the blobs are the inputs."""
    repo = tmp_path / "models--org--tiny"
    (repo / "blobs").mkdir(parents=True)
    snap = repo / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    save_file({"l.weight": torch.randn(8, 16)}, str(repo / "blobs" / "h1"))
    (repo / "blobs" / "h2").write_text('{"model_type": "x"}')
    os.symlink("../../blobs/h1", snap / "model.safetensors")
    os.symlink("../../blobs/h2", snap / "config.json")
    for blob, what in (("h1", "src shard 'model.safetensors'"), ("h2", "src file 'config.json'")):
        with pytest.raises(ValueError, match=rf"report_path \(--report\): .* is the same file as {what}"):
            convert_checkpoint(snap, tmp_path / "out", report_path=repo / "blobs" / blob, force=True)
    assert (repo / "blobs" / "h2").read_text() == '{"model_type": "x"}'
