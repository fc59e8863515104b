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
