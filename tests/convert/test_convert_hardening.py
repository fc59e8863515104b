"""Hardening of the checkpoint-reading side of ``sparse convert`` / ``sparse inspect``.

* safetensors headers: accepted exactly when the ``safetensors`` library accepts them (except that
  duplicated JSON keys are refused, where it keeps the last one silently); everything else is a
  ``ValueError`` naming the file and, where one is at fault, the tensor. Never a ``TypeError``,
  ``OverflowError``, ``RecursionError`` or ``KeyError``.
* every safetensors dtype torch has is read, inspected and copied bit-identically;
* ``torch.nn.utils.prune`` checkpoints are read as their pruned weights;
* symbolic links in an HF folder are never followed out of it.
"""
import json
import logging
import os
import re
import struct

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from sparse.cli import main
from sparse.convert import convert_checkpoint, iter_tensors, list_tensors
from sparse.convert.reader import nonzero_mask
from sparse.convert.safetensors_io import MAX_HEADER, SafetensorsReader, read_header
from sparse.convert.torch_io import load_state_dict
from sparse.masks import nm_mask

# ---------------------------------------------------------------------------------------------
# helpers


def _write(path, header=None, data=b"", raw=None, pad=True, length=None):
    """A safetensors file from a header dict (or raw header bytes) and data bytes."""
    h = raw if raw is not None else json.dumps(header).encode()
    if pad:
        h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h) if length is None else length))
        f.write(h)
        f.write(data)
    return str(path)


def _lib_read(path):
    """All tensors as the safetensors library reads them (raises what it raises)."""
    with safe_open(path, "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def _lib_accepts(path) -> bool:
    try:
        _lib_read(path)
        return True
    except Exception:  # noqa: BLE001 - the library's own error types vary by version
        return False


def _ours(path):
    with SafetensorsReader(path) as r:
        return {i.name: r.tensor(i.name).clone() for i in r.infos}


def _bits(t):
    return t.reshape(-1).view(torch.uint8) if t.numel() else torch.empty(0, dtype=torch.uint8)


def _same(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(_bits(a), _bits(b))


def F(b, e, shape=(2,), dt="F32"):  # noqa: N802 - one tensor entry
    return {"dtype": dt, "shape": list(shape), "data_offsets": [b, e]}


def _entry_raw(extra):
    return ('{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]' + extra + '}}').encode()


def _nested(depth_total):
    """A header whose deepest container sits at ``depth_total`` (top-level object = 1)."""
    d = depth_total - 2
    return _entry_raw(',"x":' + "[" * d + "]" * d)


A8 = {"a": F(0, 8)}

# (id, header dict or raw bytes, data bytes, error regex or None when accepted). The library must
# agree on every row: rejected exactly where we reject.
REJECTED = [
    ("overlap", {"a": F(0, 8), "b": F(4, 12)}, 12, r"tensor 'b'.*overlap tensor 'a'"),
    ("same_region", {"a": F(0, 8), "b": F(0, 8)}, 8, r"overlap"),
    ("gap", {"a": F(0, 8), "b": F(12, 20)}, 20, r"tensor 'b'.*gap.*'a' ends at byte 8"),
    ("gap_at_start", {"a": F(8, 16)}, 16, r"tensor 'a'.*gap.*data starts"),
    ("zero_size_after_end", {"a": F(0, 8), "b": F(16, 16, (0,))}, 8, r"tensor 'b'.*gap"),
    ("offsets_str", {"a": F("0", "8")}, 8, r"tensor 'a'.*data_offsets.*'0'"),
    ("offsets_float", {"a": F(0.0, 8.0)}, 8, r"tensor 'a'.*data_offsets.*0\.0"),
    ("offsets_exponent", _entry_raw("").replace(b"[0,8]", b"[0,8e0]"), 8, r"tensor 'a'.*data_offsets"),
    ("offsets_negative", {"a": F(-8, 0)}, 8, r"tensor 'a'.*data_offsets.*-8"),
    ("offsets_bool", {"a": F(False, True, (1,), "U8")}, 1, r"tensor 'a'.*data_offsets.*False"),
    ("offsets_null", {"a": {"dtype": "F32", "shape": [2], "data_offsets": None}}, 8, r"tensor 'a'.*data_offsets"),
    ("offsets_dict", {"a": {"dtype": "F32", "shape": [2], "data_offsets": {"0": 1, "8": 2}}}, 8,
     r"tensor 'a'.*data_offsets"),
    ("offsets_three", {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8, 8]}}, 8, r"tensor 'a'"),
    ("offsets_one", {"a": {"dtype": "F32", "shape": [2], "data_offsets": [8]}}, 8, r"tensor 'a'"),
    ("offsets_over_u64", {"a": F(0, 2 ** 70)}, 8, r"tensor 'a'.*data_offsets"),
    ("offsets_5000_digits", _entry_raw("").replace(b"[0,8]", b"[0," + b"9" * 5000 + b"]"), 8, r"not valid JSON"),
    ("begin_after_end", {"a": F(8, 0)}, 8, r"tensor 'a'.*\[8, 0\]"),
    ("size_too_big", {"a": F(0, 12)}, 12, r"tensor 'a'.*expected 8 bytes"),
    ("size_too_small", {"a": F(0, 4)}, 4, r"tensor 'a'.*expected 8 bytes"),
    ("trailing_bytes", A8, 12, r"4 bytes after the last tensor"),
    ("empty_header_trailing", {}, 8, r"8 bytes after the last tensor"),
    ("data_truncated", A8, 4, r"tensor 'a' ends at byte 8.*only 4 bytes"),
    ("dtype_unknown", {"a": F(0, 8, dt="F128")}, 8, r"tensor 'a'.*unknown dtype 'F128'"),
    ("dtype_lowercase", {"a": F(0, 8, dt="f32")}, 8, r"tensor 'a'.*unknown dtype 'f32'"),
    ("dtype_c128", {"a": F(0, 32, dt="C128")}, 32, r"tensor 'a'.*unknown dtype 'C128'"),
    ("dtype_list", {"a": F(0, 8, dt=["F32"])}, 8, r"tensor 'a'.*unknown dtype \['F32'\]"),
    ("dtype_null", {"a": F(0, 8, dt=None)}, 8, r"tensor 'a'.*unknown dtype None"),
    ("shape_float", {"a": F(0, 8, (2.0,))}, 8, r"tensor 'a'.*shape.*2\.0"),
    ("shape_str", {"a": F(0, 8, ("2",))}, 8, r"tensor 'a'.*shape.*'2'"),
    ("shape_negative", {"a": F(0, 8, (-2,))}, 8, r"tensor 'a'.*shape.*-2"),
    ("shape_bool", {"a": F(0, 1, (True,), "U8")}, 1, r"tensor 'a'.*shape.*True"),
    ("shape_not_list", {"a": {"dtype": "U8", "shape": 1, "data_offsets": [0, 1]}}, 1, r"tensor 'a'.*shape"),
    ("shape_null", {"a": {"dtype": "U8", "shape": None, "data_offsets": [0, 1]}}, 1, r"tensor 'a'.*shape"),
    ("shape_nested", {"a": {"dtype": "U8", "shape": [[1]], "data_offsets": [0, 1]}}, 1, r"tensor 'a'.*shape"),
    ("shape_over_u64", {"a": F(0, 8, (2 ** 70,))}, 8, r"tensor 'a'.*shape"),
    ("shape_product_overflow", {"a": F(0, 8, (2 ** 32, 2 ** 32, 4))}, 8, r"tensor 'a'.*overflows"),
    ("shape_overflow_before_zero", {"a": F(0, 0, (2 ** 40, 2 ** 40, 0))}, 0, r"tensor 'a'.*overflows"),
    ("shape_bits_overflow", {"a": F(0, 8, (2 ** 62,))}, 8, r"tensor 'a'.*overflows"),
    ("f4_not_whole_bytes", {"a": F(0, 2, (3,), "F4")}, 2, r"tensor 'a'.*whole number of bytes"),
    ("metadata_int_value", {"__metadata__": {"k": 1}, **A8}, 8, r"__metadata__.*str -> str"),
    ("metadata_list", {"__metadata__": ["k"], **A8}, 8, r"__metadata__"),
    ("metadata_nested", {"__metadata__": {"k": {"x": "y"}}, **A8}, 8, r"__metadata__"),
    ("metadata_str", {"__metadata__": "k", **A8}, 8, r"__metadata__"),
    ("metadata_number", {"__metadata__": 5, **A8}, 8, r"__metadata__"),
    ("entry_list", {"a": [1, 2]}, 0, r"tensor 'a'.*expected an object.*list"),
    ("entry_str", {"a": "F32"}, 0, r"tensor 'a'.*expected an object.*str"),
    ("entry_null", {"a": None}, 0, r"tensor 'a'.*expected an object"),
    ("missing_dtype", {"a": {"shape": [2], "data_offsets": [0, 8]}}, 8, r"tensor 'a'.*missing dtype"),
    ("missing_shape", {"a": {"dtype": "F32", "data_offsets": [0, 8]}}, 8, r"tensor 'a'.*missing shape"),
    ("missing_offsets", {"a": {"dtype": "F32", "shape": [2]}}, 8, r"tensor 'a'.*missing data_offsets"),
    ("duplicate_name_other_offsets", _entry_raw("").replace(b"}}", b'},"a":' + json.dumps(F(8, 16)).encode() + b"}"),
     16, r"key 'a' appears twice"),
    ("duplicate_field", _entry_raw(',"dtype":"F32"'), 8, r"key 'dtype' appears twice"),
    ("duplicate_metadata", b'{"__metadata__":{"x":"1"},"__metadata__":{"x":"2"},"a":'
     + json.dumps(F(0, 8)).encode() + b"}", 8, r"key '__metadata__' appears twice"),
    ("nan_offset", _entry_raw("").replace(b"[0,8]", b"[0,NaN]"), 8, r"NaN"),
    ("infinity_shape", _entry_raw("").replace(b"[2]", b"[Infinity]"), 8, r"Infinity"),
    ("minus_infinity", _entry_raw("").replace(b"[2]", b"[-Infinity]"), 8, r"Infinity"),
    ("deep_metadata_100k", b'{"__metadata__":' + b"[" * 100000 + b"]" * 100000 + b"}", 0, r"nested deeper"),
    ("deep_extra_field_5k", _entry_raw(',"x":' + '{"y":' * 5000 + "1" + "}" * 5000), 8, r"nested deeper"),
    ("depth_128", _nested(128), 8, r"nested deeper than 127"),
    ("header_list", b"[1,2]", 0, r"not a JSON object \(got list\)"),
    ("header_number", b"5", 0, r"not a JSON object"),
    ("header_string", b'"x"', 0, r"not a JSON object"),
    ("header_null", b"null", 0, r"not a JSON object"),
    ("header_not_utf8", b'{"\xff":1}', 0, r"not valid UTF-8"),
    ("header_bom", b"\xef\xbb\xbf{}", 0, r"not valid JSON"),
    ("header_trailing_junk", b"{}xx", 0, r"not valid JSON"),
    ("header_nul_padding", b"{}" + b"\x00" * 6, 0, r"not valid JSON"),
    ("header_empty", b"", 0, r"not valid JSON"),
    ("header_truncated_json", _entry_raw("")[:-3], 8, r"not valid JSON"),
    ("name_lone_surrogate", b'{"\\ud800":' + json.dumps(F(0, 8)).encode() + b"}", 8, r"surrogate"),
]

ACCEPTED = [
    ("plain", {"a": F(0, 8), "b": F(8, 16)}, 16),
    ("header_order_not_data_order", {"b": F(8, 16), "a": F(0, 8)}, 16),
    ("metadata", {"__metadata__": {"format": "pt", "k": ""}, **A8}, 8),
    ("metadata_null", {"__metadata__": None, **A8}, 8),
    ("extra_field", {"a": {**F(0, 8), "extra": {"x": [1, 2]}}}, 8),
    ("empty", {}, 0),
    ("zero_size_shared_offset", {"a": F(0, 0, (0,)), "b": F(0, 0, (0, 3)), "c": F(0, 8)}, 8),
    ("zero_size_in_the_middle", {"a": F(0, 8), "b": F(8, 8, (0,)), "c": F(8, 16)}, 16),
    ("zero_size_at_end", {"a": F(0, 8), "z": F(8, 8, (4, 0))}, 8),
    ("empty_name", {"": F(0, 8)}, 8),
    ("unicode_name", {"ä.weight/😀": F(0, 8)}, 8),
    ("nul_in_name", {"a\u0000b": F(0, 8)}, 8),
    ("scalar", {"a": F(0, 4, ())}, 4),
    ("misaligned_f32", {"a": F(0, 1, (1,), "U8"), "b": F(1, 9)}, 9),
    ("misaligned_f64", {"a": F(0, 3, (3,), "I8"), "b": F(3, 19, (2,), "F64")}, 19),
    ("thousand_dims", {"a": F(0, 4, (1,) * 1000)}, 4),
    ("depth_127", _nested(127), 8),
    ("leading_whitespace", b"  " + _entry_raw(""), 8),
    ("unpadded_header", ("unpadded", _entry_raw("")), 8),
    ("f4_packed", {"a": F(0, 4, (2, 4), "F4")}, 4),
]

# Accepted by the safetensors library (it keeps the last duplicate), refused here: with duplicate
# keys two readers may see different tensors in the same file.
STRICTER = [
    ("duplicate_name_same_entry", _entry_raw("").replace(b"}}", b'},"a":' + json.dumps(F(0, 8)).encode() + b"}"),
     8, r"key 'a' appears twice"),
    ("duplicate_metadata_key", b'{"__metadata__":{"x":"1","x":"2"},"a":' + json.dumps(F(0, 8)).encode() + b"}", 8,
     r"key 'x' appears twice"),
]


def _make(tmp_path, case_id, header, ndata):
    data = bytes(range(256)) * (ndata // 256 + 1)
    pad = True
    if isinstance(header, tuple):  # ("unpadded", raw)
        pad, header = False, header[1]
    if isinstance(header, bytes):
        return _write(tmp_path / f"{case_id}.safetensors", raw=header, data=data[:ndata], pad=pad)
    return _write(tmp_path / f"{case_id}.safetensors", header, data[:ndata], pad=pad)


@pytest.mark.parametrize("case_id,header,ndata,match", REJECTED, ids=[c[0] for c in REJECTED])
def test_malformed_header_rejected_like_safetensors(tmp_path, case_id, header, ndata, match):
    path = _make(tmp_path, case_id, header, ndata)
    assert not _lib_accepts(path), "the safetensors library accepts this file: the table is wrong"
    with pytest.raises(ValueError) as exc:
        _ours(path)
    msg = str(exc.value)
    assert path in msg and re.search(match, msg), msg
    # the converter and inspect fail the same way, before writing anything
    with pytest.raises(ValueError, match=re.escape(path)):
        convert_checkpoint(path, tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()


@pytest.mark.parametrize("case_id,header,ndata", ACCEPTED, ids=[c[0] for c in ACCEPTED])
def test_valid_header_accepted_like_safetensors(tmp_path, case_id, header, ndata):
    path = _make(tmp_path, case_id, header, ndata)
    ref = _lib_read(path)
    got = _ours(path)
    assert set(got) == set(ref)
    for k in ref:
        assert _same(got[k], ref[k]), k


@pytest.mark.parametrize("case_id,header,ndata,match", STRICTER, ids=[c[0] for c in STRICTER])
def test_duplicate_keys_refused_even_where_safetensors_keeps_the_last(tmp_path, case_id, header, ndata, match):
    path = _make(tmp_path, case_id, header, ndata)
    assert _lib_accepts(path)
    with pytest.raises(ValueError, match=match):
        _ours(path)


def test_header_length_limits(tmp_path):
    short = tmp_path / "short.safetensors"
    for blob in (b"", b"\x01\x02\x03\x04"):
        short.write_bytes(blob)
        assert not _lib_accepts(str(short))
        with pytest.raises(ValueError, match="shorter than the 8-byte header length"):
            read_header(str(short))
    past = _write(tmp_path / "past.safetensors", raw=b"{}", length=1000)
    huge = _write(tmp_path / "huge.safetensors", raw=b"{}", length=2 ** 64 - 1)
    for p in (past, huge):
        assert not _lib_accepts(p)
        with pytest.raises(ValueError, match=re.escape(p)):
            read_header(p)
    # Over the format's limit although the file is big enough (sparse file: no disk used).
    big = tmp_path / "big.safetensors"
    with open(big, "wb") as f:
        f.write(struct.pack("<Q", MAX_HEADER + 1))
        f.truncate(8 + MAX_HEADER + 8)
    assert not _lib_accepts(str(big))
    with pytest.raises(ValueError, match="over the format's limit"):
        read_header(str(big))


def test_not_a_regular_file(tmp_path):
    fifo = tmp_path / "pipe.safetensors"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match="not a regular file"):
        convert_checkpoint(fifo, tmp_path / "o.safetensors")  # must not block reading the pipe
    fifo_pt = tmp_path / "pipe.pt"
    os.mkfifo(fifo_pt)
    with pytest.raises(ValueError, match="not a regular file"):
        list_tensors(fifo_pt)
    (tmp_path / "dir.safetensors").mkdir()
    with pytest.raises(ValueError, match="dir.safetensors"):
        convert_checkpoint(tmp_path / "dir.safetensors", tmp_path / "o.safetensors")


BAD_INDEX = [
    ("deep", "[" * 100000 + "]" * 100000, r"corrupt shard index.*nested"),
    ("digits", '{"weight_map": {"a": ' + "9" * 5000 + "}}", r"corrupt shard index.*not valid JSON"),
    ("not_object", "[1, 2]", r"corrupt shard index.*weight_map"),
    ("map_list", '{"weight_map": ["a.safetensors"]}', r"corrupt shard index.*weight_map"),
    ("map_empty", '{"weight_map": {}}', r"corrupt shard index.*non-empty"),
    ("name_int", '{"weight_map": {"a": 3}}', r"shard name '3' of tensor 'a'"),
    ("name_list", '{"weight_map": {"a": ["x.safetensors"]}}', r"shard name .* of tensor 'a'"),
    ("name_mixed", '{"weight_map": {"a": "s.safetensors", "b": 1}}', r"shard name '1' of tensor 'b'"),
    ("name_empty", '{"weight_map": {"a": ""}}', r"shard name '' of tensor 'a'"),
    ("name_dot", '{"weight_map": {"a": "."}}', r"shard name '\.' of tensor 'a'"),
    ("name_absolute", '{"weight_map": {"a": "/etc/passwd"}}', r"relative path"),
    ("name_dotdot_inside", '{"weight_map": {"a": "sub/../../s.safetensors"}}', r"relative path"),
    ("not_utf8", b'{"weight_map": {"a": "\xff"}}', r"corrupt shard index.*UTF-8"),
]


@pytest.mark.parametrize("case_id,text,match", BAD_INDEX, ids=[c[0] for c in BAD_INDEX])
def test_bad_shard_index_clear_error(tmp_path, case_id, text, match):
    save_file({"l.weight": torch.randn(4, 8)}, str(tmp_path / "s.safetensors"))
    index = tmp_path / "model.safetensors.index.json"
    index.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(ValueError, match=match):
        convert_checkpoint(index, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_shard_named_twice_is_one_shard(tmp_path):
    save_file({"a.weight": torch.randn(4, 8)}, str(tmp_path / "s1.safetensors"))
    save_file({"b.weight": torch.randn(4, 8)}, str(tmp_path / "s2.safetensors"))
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"a.weight": "s1.safetensors", "b.weight": "./s2.safetensors", "c": "s2.safetensors"}}))
    report = convert_checkpoint(tmp_path / "model.safetensors.index.json", tmp_path / "out")
    assert sorted(t.name for t in report.tensors) == ["a.weight", "b.weight"]
    assert [n for n, _ in iter_tensors(tmp_path / "model.safetensors.index.json")] == ["a.weight", "b.weight"]


# ---------------------------------------------------------------------------------------------
# every dtype

TORCH_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "U16": torch.uint16, "U32": torch.uint32, "U64": torch.uint64,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2, "F8_E4M3FNUZ": torch.float8_e4m3fnuz,
    "F8_E5M2FNUZ": torch.float8_e5m2fnuz, "F8_E8M0": torch.float8_e8m0fnu, "C64": torch.complex64,
}


def _dtype_tensor(dtype, shape=(4, 8), seed=0):
    """Random bytes of ``dtype`` with about half the elements zero (a valid bit pattern each)."""
    g = torch.Generator().manual_seed(seed)
    if dtype == torch.bool:
        return torch.rand(shape, generator=g) < 0.5
    if dtype.is_floating_point or dtype.is_complex:
        t = torch.randn(shape, generator=g)
        t[torch.rand(shape, generator=g) < 0.5] = 0
        return t.to(dtype) if not dtype.is_complex else torch.complex(t, torch.zeros_like(t))
    t = torch.randint(0, 100, shape, generator=g)
    t[torch.rand(shape, generator=g) < 0.5] = 0
    return t.to(dtype)


@pytest.mark.parametrize("tag", list(TORCH_DTYPES))
def test_every_dtype_reads_inspects_and_copies(tmp_path, tag, capsys):
    dtype = TORCH_DTYPES[tag]
    t = _dtype_tensor(dtype)
    raw = _bits(t).numpy().tobytes()
    src = _write(tmp_path / "in.safetensors", {"x.table": F(0, len(raw), t.shape, tag)}, raw)
    ref = _lib_read(src)["x.table"]
    got = _ours(src)["x.table"]
    assert _same(got, ref) and got.dtype == dtype
    # inspect: density for every dtype; N:M analysis only for real floating dtypes
    assert main(["inspect", src, "--json"]) == 0
    row = json.loads(capsys.readouterr().out)[0]
    want = float((t.to(torch.float32) if dtype not in (torch.bool, torch.complex64) else t).ne(0).float().mean())
    if dtype == torch.float8_e8m0fnu:
        want = 1.0  # e8m0 (a power-of-two scale) has no zero
    assert row["density"] == pytest.approx(want)
    if not dtype.is_floating_point:
        assert row["nm"] == [] and "note" in row
    assert main(["inspect", src]) == 0
    capsys.readouterr()
    # convert: a non-target copied bit-identically, to safetensors (raw) and to .pt (via tensors)
    convert_checkpoint(src, tmp_path / "out.safetensors")
    assert _same(_lib_read(str(tmp_path / "out.safetensors"))["x.table"], ref)
    convert_checkpoint(src, tmp_path / "out.pt")
    back = torch.load(tmp_path / "out.pt", weights_only=True)["x.table"]
    assert _same(back, ref)
    # and back from .pt to safetensors through the streaming writer
    convert_checkpoint(tmp_path / "out.pt", tmp_path / "again.safetensors")
    assert _same(_lib_read(str(tmp_path / "again.safetensors"))["x.table"], ref)


def test_f4_packed_pairs(tmp_path, capsys):
    # F4 is float4_e2m1fn_x2 in torch: 2 elements per byte, the last dim halves (as in safetensors.torch)
    data = bytes([0x00, 0x10, 0x02, 0x88, 0x21, 0x80, 0x08, 0x77])  # 0x8 = -0.0
    src = _write(tmp_path / "f4.safetensors", {"q.weight": F(0, 8, (2, 8), "F4")}, data)
    ref = _lib_read(src)["q.weight"]
    got = _ours(src)["q.weight"]
    assert _same(got, ref) and got.shape == (2, 4)
    assert nonzero_mask(got).shape == (2, 8)
    assert int(nonzero_mask(got).sum()) == 6
    assert main(["inspect", src, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["density"] == pytest.approx(6 / 16)
    convert_checkpoint(src, tmp_path / "o.pt")
    convert_checkpoint(tmp_path / "o.pt", tmp_path / "o.safetensors")
    with open(tmp_path / "o.safetensors", "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        assert json.loads(f.read(n))["q.weight"]["shape"] == [2, 8]
    assert _same(_lib_read(str(tmp_path / "o.safetensors"))["q.weight"], ref)
    # an odd last dimension is valid safetensors but has no torch form
    odd = _write(tmp_path / "odd.safetensors", {"q": F(0, 3, (2, 3), "F4")}, bytes(3))
    read_header(odd)
    with pytest.raises(ValueError, match=r"tensor 'q'.*F4.*cannot represent"):
        _ours(odd)


@pytest.mark.parametrize("tag", ["F6_E2M3", "F6_E3M2"])
def test_dtype_without_torch_equivalent_is_a_clear_error(tmp_path, tag):
    src = _write(tmp_path / "f6.safetensors", {"keep": F(0, 8), "q": F(8, 14, (2, 4), tag)}, bytes(14))
    infos, _, _ = read_header(src)  # the header itself is valid
    assert [i.name for i in infos] == ["keep", "q"]
    assert not _lib_accepts(src)
    with pytest.raises(ValueError, match=rf"{re.escape(src)}: tensor 'q' has dtype {tag}.*cannot represent"):
        _ours(src)
    with pytest.raises(ValueError, match=r"tensor 'q'"):
        convert_checkpoint(src, tmp_path / "o.safetensors")
    assert not (tmp_path / "o.safetensors").exists()


def test_misaligned_tensor_is_converted_correctly(tmp_path):
    w = torch.randn(8, 16)
    raw = w.numpy().tobytes()
    src = _write(tmp_path / "m.safetensors", {"b": F(0, 3, (3,), "U8"), "l.weight": F(3, 3 + len(raw), (8, 16))},
                 b"\x01\x02\x03" + raw)
    convert_checkpoint(src, tmp_path / "o.safetensors")
    out = load_file(str(tmp_path / "o.safetensors"))
    assert torch.equal(out["l.weight"], torch.where(nm_mask(w, 2, 4), w, 0))
    assert out["b"].tolist() == [1, 2, 3]


# ---------------------------------------------------------------------------------------------
# .pt state dicts that weights_only still rebuilds but nothing can read


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support", "ignore:Validating sparse tensor invariants")
@pytest.mark.parametrize("kind", ["sparse_coo", "sparse_csr", "meta"])
def test_pt_tensor_kinds_without_data_refused(tmp_path, kind):
    w = torch.randn(4, 8)
    bad = {"sparse_coo": w.to_sparse, "sparse_csr": w.to_sparse_csr,
           "meta": lambda: torch.empty(4, 8, device="meta")}[kind]()
    path = tmp_path / f"{kind}.pt"
    torch.save({"ok.weight": w, "l.weight": bad}, path)
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}: tensor 'l.weight' .*dense"):
        convert_checkpoint(path, tmp_path / "o.pt")
    assert not (tmp_path / "o.pt").exists()


@pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor", "ignore:TypedStorage is deprecated")
def test_pt_odd_but_valid_tensors(tmp_path, capsys):
    sd = {"l.weight": torch.randn(1, 16).expand(8, 16),  # stride 0
          "t.weight": torch.randn(16, 8).t(),             # non-contiguous
          "q": torch.quantize_per_tensor(torch.tensor([0.0, 1.0, 2.0]), 0.5, 0, torch.qint8)}
    torch.save(sd, tmp_path / "s.pt")
    convert_checkpoint(tmp_path / "s.pt", tmp_path / "o.pt")
    out = torch.load(tmp_path / "o.pt", weights_only=True)
    for k in ("l.weight", "t.weight"):
        assert torch.equal(out[k], torch.where(nm_mask(sd[k].contiguous(), 2, 4), sd[k], 0))
    assert main(["inspect", str(tmp_path / "s.pt"), "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["q"]["density"] == pytest.approx(2 / 3)


# ---------------------------------------------------------------------------------------------
# torch.nn.utils.prune checkpoints


class _Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc1 = torch.nn.Linear(16, 8)
        self.fc2 = torch.nn.Linear(8, 4)


def _pruned_model():
    from torch.nn.utils import prune

    m = _Tiny()
    prune.l1_unstructured(m.fc1, "weight", amount=0.3)
    prune.l1_unstructured(m.fc2, "weight", amount=0.6)
    prune.l1_unstructured(m.fc1, "bias", amount=0.5)
    return m


def _expected_pruned(m):
    return {"fc1.weight": m.fc1.weight.detach().clone(), "fc1.bias": m.fc1.bias.detach().clone(),
            "fc2.weight": m.fc2.weight.detach().clone(), "fc2.bias": m.fc2.bias.detach().clone()}


@pytest.mark.parametrize("fmt", ["pt", "safetensors"])
@pytest.mark.parametrize("out_fmt", ["pt", "safetensors"])
def test_prune_checkpoint_converted_as_pruned_weights(tmp_path, fmt, out_fmt):
    m = _pruned_model()
    sd = {k: v.detach().clone() for k, v in m.state_dict().items()}
    assert "fc1.weight_orig" in sd and "fc1.weight_mask" in sd and "fc1.bias_mask" in sd
    src = tmp_path / f"pruned.{fmt}"
    torch.save(sd, src) if fmt == "pt" else save_file(sd, str(src))
    want = _expected_pruned(m)
    # the reader yields plain names, never the _orig/_mask keys
    got = {k: v.clone() for k, v in iter_tensors(src)}
    assert set(got) == set(want)
    for k in want:
        assert torch.equal(got[k], want[k]) and got[k].dtype == want[k].dtype, k
    assert [n for n, _, _ in list_tensors(src)] == list(got)
    dst = tmp_path / f"out.{out_fmt}"
    report = convert_checkpoint(src, dst, pattern="2:4")
    out = load_file(str(dst)) if out_fmt == "safetensors" else torch.load(dst, weights_only=True)
    assert set(out) == {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"}
    for k in ("fc1.weight", "fc2.weight"):
        assert torch.equal(out[k], torch.where(nm_mask(want[k], 2, 4), want[k], 0)), k
        assert (out[k].reshape(out[k].shape[0], -1, 4) != 0).sum(-1).max() <= 2
    assert torch.equal(out["fc1.bias"], want["fc1.bias"]) and torch.equal(out["fc2.bias"], want["fc2.bias"])
    assert {t.name for t in report.tensors} == {"fc1.weight", "fc2.weight"}
    assert all(t.nnz_before < t.numel for t in report.tensors)  # the pruned weights were read, not weight_orig
    # the converted model loads into an unpruned module
    fresh = _Tiny()
    fresh.load_state_dict(out)


def test_prune_checkpoint_in_hf_folder(tmp_path):
    m = _pruned_model()
    (tmp_path / "hf").mkdir()
    save_file({k: v.detach().clone() for k, v in m.state_dict().items()}, str(tmp_path / "hf" / "model.safetensors"))
    (tmp_path / "hf" / "config.json").write_text("{}")
    convert_checkpoint(tmp_path / "hf", tmp_path / "out")
    assert set(load_file(str(tmp_path / "out" / "model.safetensors"))) == {"fc1.weight", "fc1.bias", "fc2.weight",
                                                                          "fc2.bias"}


def test_prune_mask_dtype_and_bf16(tmp_path):
    w = torch.randn(8, 16).bfloat16()
    mask = (torch.rand(8, 16) > 0.4)
    save_file({"l.weight_orig": w, "l.weight_mask": mask}, str(tmp_path / "b.safetensors"))
    (name, t), = list(iter_tensors(tmp_path / "b.safetensors"))
    assert name == "l.weight" and t.dtype == torch.bfloat16 and torch.equal(t, w * mask.bfloat16())


BAD_PRUNE = [
    ("orig_without_mask", {"l.weight_orig": torch.randn(4, 8), "l.bias": torch.randn(4)},
     r"'l\.weight_orig' has no matching 'l\.weight_mask'"),
    ("mask_without_orig", {"l.weight_orig": torch.randn(4, 8), "l.weight_mask": torch.ones(4, 8),
                           "k.weight_mask": torch.ones(4, 8), "k.weight": torch.randn(4, 8)},
     r"'k\.weight_mask' has no matching 'k\.weight_orig'"),
    ("shape_mismatch", {"l.weight_orig": torch.randn(4, 8), "l.weight_mask": torch.ones(8, 4)},
     r"'l\.weight_orig' has shape \[4, 8\] but 'l\.weight_mask' has shape \[8, 4\]"),
    ("pair_and_plain", {"l.weight_orig": torch.randn(4, 8), "l.weight_mask": torch.ones(4, 8),
                        "l.weight": torch.randn(4, 8)},
     r"'l\.weight' and also the pruned pair 'l\.weight_orig' / 'l\.weight_mask'"),
]


@pytest.mark.parametrize("fmt", ["pt", "safetensors"])
@pytest.mark.parametrize("case_id,sd,match", BAD_PRUNE, ids=[c[0] for c in BAD_PRUNE])
def test_broken_prune_checkpoint_names_both_keys(tmp_path, fmt, case_id, sd, match):
    src = tmp_path / f"{case_id}.{fmt}"
    torch.save(sd, src) if fmt == "pt" else save_file(sd, str(src))
    with pytest.raises(ValueError, match=match):
        convert_checkpoint(src, tmp_path / f"o.{fmt}")
    with pytest.raises(ValueError, match=re.escape(str(src))):
        list(iter_tensors(src))
    assert not (tmp_path / f"o.{fmt}").exists()


def test_mask_named_buffers_are_ordinary_without_prune_pairs(tmp_path):
    sd = {"enc.attention_mask": torch.ones(1, 8), "enc.l.weight": torch.randn(4, 8)}
    save_file(sd, str(tmp_path / "m.safetensors"))
    torch.save(sd, tmp_path / "m.pt")
    for src in (tmp_path / "m.safetensors", tmp_path / "m.pt"):
        assert [n for n, _ in iter_tensors(src)] == list(sd)
    assert set(load_state_dict(str(tmp_path / "m.pt"))) == set(sd)


# ---------------------------------------------------------------------------------------------
# symbolic links in HF folders


def _hf(tmp_path, name="hf"):
    folder = tmp_path / name
    folder.mkdir()
    w = torch.randn(8, 16)
    save_file({"l.weight": w}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text('{"model_type": "x"}')
    return folder


def test_link_to_file_outside_is_skipped_with_warning(tmp_path, caplog):
    hf = _hf(tmp_path)
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP SECRET")
    os.symlink(secret, hf / "tokenizer.json")
    os.symlink("../secret.txt", hf / "relative_escape.txt")
    with caplog.at_level(logging.WARNING):
        convert_checkpoint(hf, tmp_path / "out")
    out = tmp_path / "out"
    assert sorted(os.listdir(out)) == ["config.json", "model.safetensors"]
    for root, _, files in os.walk(out):
        for f in files:
            assert b"TOP SECRET" not in (open(os.path.join(root, f), "rb").read())
    text = caplog.text
    assert "tokenizer.json" in text and "relative_escape.txt" in text and "outside" in text


def test_link_inside_is_kept_as_relative_link(tmp_path):
    hf = _hf(tmp_path)
    (hf / "sub").mkdir()
    (hf / "sub" / "vocab.txt").write_text("a\nb\n")
    os.symlink("sub/vocab.txt", hf / "vocab.txt")
    os.symlink(hf / "config.json", hf / "sub" / "config_abs.json")  # absolute, but inside
    os.symlink("sub", hf / "alias_dir")
    convert_checkpoint(hf, tmp_path / "out")
    out = tmp_path / "out"
    assert os.path.islink(out / "vocab.txt") and os.readlink(out / "vocab.txt") == "sub/vocab.txt"
    assert (out / "vocab.txt").read_text() == "a\nb\n"
    assert os.readlink(out / "sub" / "config_abs.json") == "../config.json"  # never pointing back into SRC
    assert os.path.realpath(out / "sub" / "config_abs.json") == os.path.realpath(out / "config.json")
    assert os.path.islink(out / "alias_dir") and os.readlink(out / "alias_dir") == "sub"
    assert not os.path.islink(out / "sub") and (out / "sub" / "vocab.txt").read_text() == "a\nb\n"


def test_dangling_and_looping_links_skipped(tmp_path, caplog):
    hf = _hf(tmp_path)
    os.symlink("does_not_exist.json", hf / "dangling.json")
    os.symlink("loop.json", hf / "loop.json")
    with caplog.at_level(logging.WARNING):
        convert_checkpoint(hf, tmp_path / "out")
    assert sorted(os.listdir(tmp_path / "out")) == ["config.json", "model.safetensors"]
    assert "dangling.json" in caplog.text and "loop.json" in caplog.text


def test_symlinked_directory_outside_not_followed(tmp_path, caplog):
    hf = _hf(tmp_path)
    outside = tmp_path / "private"
    outside.mkdir()
    (outside / "id_rsa").write_text("KEY")
    os.symlink(outside, hf / "extras")
    os.symlink(tmp_path, hf / "parent")  # would recurse into the output folder too
    with caplog.at_level(logging.WARNING):
        convert_checkpoint(hf, tmp_path / "out")
    assert sorted(os.listdir(tmp_path / "out")) == ["config.json", "model.safetensors"]
    assert "extras" in caplog.text and "parent" in caplog.text


def test_special_files_skipped_not_hanging(tmp_path, caplog):
    hf = _hf(tmp_path)
    os.mkfifo(hf / "pipe")
    with caplog.at_level(logging.WARNING):
        convert_checkpoint(hf, tmp_path / "out")
    assert sorted(os.listdir(tmp_path / "out")) == ["config.json", "model.safetensors"]
    assert "pipe" in caplog.text and "not a regular file" in caplog.text


def test_hf_hub_cache_snapshot_copies_its_blobs(tmp_path):
    # hub cache layout: snapshots/<rev>/<file> -> ../../blobs/<hash>
    repo = tmp_path / "models--org--tiny"
    (repo / "blobs").mkdir(parents=True)
    snap = repo / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    save_file({"l.weight": torch.randn(8, 16)}, str(repo / "blobs" / "h1"))
    (repo / "blobs" / "h2").write_text('{"model_type": "x"}')
    os.symlink("../../blobs/h1", snap / "model.safetensors")
    os.symlink("../../blobs/h2", snap / "config.json")
    secret = tmp_path / "secret.txt"
    secret.write_text("S")
    os.symlink(secret, snap / "evil.txt")
    convert_checkpoint(snap, tmp_path / "out")
    out = tmp_path / "out"
    assert sorted(os.listdir(out)) == ["config.json", "model.safetensors"]
    assert not os.path.islink(out / "config.json") and (out / "config.json").read_text() == '{"model_type": "x"}'


def test_inspect_folder_with_links_does_not_warn(tmp_path, caplog):
    hf = _hf(tmp_path)
    os.symlink(tmp_path, hf / "parent")
    with caplog.at_level(logging.WARNING):
        assert [n for n, _ in iter_tensors(hf)] == ["l.weight"]
    assert "parent" not in caplog.text
