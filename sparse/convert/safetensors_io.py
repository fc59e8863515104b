"""Streaming safetensors I/O: read one tensor at a time from a memory map, write one tensor at a time.

The safetensors format is an 8-byte little-endian header length N, N bytes of JSON
(``{"__metadata__": {str: str}, name: {"dtype", "shape", "data_offsets": [begin, end]}}``) and the
raw little-endian tensor bytes. The ``safetensors`` package can only *write* a whole dict held in
memory, so the writer here emits the header first (shapes and dtypes are known up front: conversion
never changes them) and then streams each tensor's bytes, chunk by chunk, so peak RAM stays bounded
by the largest tensor instead of the whole checkpoint.
"""
from __future__ import annotations

import json
import mmap
import os
import re
import stat
import struct
from dataclasses import dataclass, replace

import torch

# Every dtype tag the safetensors format defines, with its size in bits (the format sizes tensors
# in bits: F4 and F6 pack several elements per byte). Any other tag is a corrupt-file error.
BITS: dict[str, int] = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8, "F8_E4M3FNUZ": 8, "F8_E5M2FNUZ": 8,
    "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
    "I16": 16, "U16": 16, "F16": 16, "BF16": 16, "I32": 32, "U32": 32, "F32": 32,
    "I64": 64, "U64": 64, "F64": 64, "C64": 64,
}
# safetensors dtype tag <-> torch dtype, for the tags torch can hold. F4 is stored by torch as
# float4_e2m1fn_x2 (two elements per byte), so its torch shape halves the last dimension (as in
# ``safetensors.torch``). F6_* have no torch dtype: such a header is valid, the tensor unreadable.
DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "U16": torch.uint16, "U32": torch.uint32, "U64": torch.uint64,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2, "F8_E4M3FNUZ": torch.float8_e4m3fnuz,
    "F8_E5M2FNUZ": torch.float8_e5m2fnuz, "F8_E8M0": torch.float8_e8m0fnu, "C64": torch.complex64,
    "F4": torch.float4_e2m1fn_x2,
}
TAGS: dict[torch.dtype, str] = {v: k for k, v in DTYPES.items()}
_PACKED = {torch.float4_e2m1fn_x2: 2}  # elements per torch element

MAX_HEADER = 100_000_000  # the safetensors library's own limit on the header length (bytes)
MAX_DEPTH = 127           # deepest JSON nesting the safetensors library parses (serde_json's limit)
_U64 = 2 ** 64 - 1        # offsets and shape entries are u64 in the format
COPY_CHUNK = 16 * 1024 * 1024    # bytes per write when copying a tensor verbatim
_SURROGATE = re.compile("[\ud800-\udfff]")


def corrupt(path: str, what: str) -> ValueError:
    return ValueError(f"{path}: corrupt or truncated safetensors file ({what})")


@dataclass(frozen=True)
class TensorInfo:
    """One tensor's entry in a safetensors header; ``begin``/``end`` are byte offsets in the data.

    ``file_shape`` is the shape as stored (in elements of ``tag``); ``dtype``/``shape`` are what
    :meth:`SafetensorsReader.tensor` returns and raise ``ValueError`` where torch has no such dtype.
    """
    name: str
    tag: str
    file_shape: tuple[int, ...]
    begin: int
    end: int
    path: str = ""

    def _unreadable(self, why: str) -> ValueError:
        return ValueError(f"{self.path}: tensor {self.name!r} has dtype {self.tag} {list(self.file_shape)}, "
                          f"which torch {torch.__version__} cannot represent ({why})")

    @property
    def dtype(self) -> torch.dtype:
        if self.tag not in DTYPES:
            raise self._unreadable("no torch dtype")
        return DTYPES[self.tag]

    @property
    def shape(self) -> tuple[int, ...]:
        pack = _PACKED.get(self.dtype, 1)
        if pack == 1:
            return self.file_shape
        if not self.file_shape or self.file_shape[-1] % pack:
            raise self._unreadable(f"{self.dtype} packs {pack} elements along the last dimension")
        return self.file_shape[:-1] + (self.file_shape[-1] // pack,)

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


class _DuplicateKey(ValueError):
    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


def _unique_object(pairs: list) -> dict:
    # JSON leaves duplicate keys to the reader; Python keeps the last silently, so a header could
    # show one tensor to this reader and another to a different one. Refuse them all.
    out = dict(pairs)
    if len(out) != len(pairs):
        seen = set()
        for k, _ in pairs:
            if k in seen:
                raise _DuplicateKey(k)
            seen.add(k)
    return out


def _no_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def _nesting_problem(obj) -> str | None:
    """Why a parsed header is beyond what the format's reader accepts (too deep, lone surrogate)."""
    stack = [(obj, 1)]
    while stack:
        o, depth = stack.pop()
        if isinstance(o, (dict, list)):
            if depth > MAX_DEPTH:
                return f"JSON nested deeper than {MAX_DEPTH} levels"
            items = o.items() if isinstance(o, dict) else enumerate(o)
            for k, v in items:
                if isinstance(k, str) and _SURROGATE.search(k):
                    return f"key {k!r} holds an unpaired UTF-16 surrogate"
                stack.append((v, depth + 1))
        elif isinstance(o, str) and _SURROGATE.search(o):
            return f"string {o[:40]!r} holds an unpaired UTF-16 surrogate"
    return None


def _is_u64(x) -> bool:
    return type(x) is int and 0 <= x <= _U64  # noqa: E721 (bool is an int subclass but not a u64)


def _short(x, limit: int = 80) -> str:
    s = repr(x)
    return s if len(s) <= limit else s[:limit] + "..."


def _parse_entry(path: str, name: str, entry) -> TensorInfo:
    if not isinstance(entry, dict):
        raise corrupt(path, f"tensor {name!r}: expected an object with dtype, shape and data_offsets, "
                            f"got {type(entry).__name__} {_short(entry)}")
    missing = [k for k in ("dtype", "shape", "data_offsets") if k not in entry]
    if missing:
        raise corrupt(path, f"tensor {name!r}: missing {', '.join(missing)}")
    tag, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(tag, str) or tag not in BITS:
        raise corrupt(path, f"tensor {name!r}: unknown dtype {_short(tag)} (expected one of {', '.join(BITS)})")
    if not isinstance(shape, list) or not all(_is_u64(s) for s in shape):
        raise corrupt(path, f"tensor {name!r}: shape must be a list of non-negative integers, got {_short(shape)}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_u64(o) for o in offsets)):
        raise corrupt(path, f"tensor {name!r}: data_offsets must be [begin, end] with non-negative integers, "
                            f"got {_short(offsets)}")
    begin, end = offsets
    # Sizes are u64 in the format: a product that overflows is refused even if a later dim is 0.
    numel = 1
    for s in shape:
        numel *= s
        if numel > _U64:
            raise corrupt(path, f"tensor {name!r}: shape {_short(shape)} overflows a 64-bit element count")
    nbits = numel * BITS[tag]
    if nbits > _U64:
        raise corrupt(path, f"tensor {name!r}: shape {_short(shape)} of {tag} overflows a 64-bit size")
    if nbits % 8:
        raise corrupt(path, f"tensor {name!r}: {numel} elements of {tag} ({BITS[tag]} bits) are not a whole "
                            f"number of bytes")
    if end < begin or end - begin != nbits // 8:
        raise corrupt(path, f"tensor {name!r}: data_offsets [{begin}, {end}] do not hold shape {shape} {tag} "
                            f"(expected {nbits // 8} bytes)")
    return TensorInfo(name, tag, tuple(shape), begin, end, path)


def read_header(path: str) -> tuple[list[TensorInfo], dict[str, str] | None, int]:
    """Parse and validate a safetensors header.

    Returns ``(tensors in data order, metadata or None, data start offset)``. Accepts exactly what
    the safetensors library accepts (plus: duplicated JSON keys are refused, where it silently keeps
    the last); anything else raises one ``ValueError`` naming the file and, where one is at fault,
    the tensor: a short file, a header length past the file or over the format's limit, bad UTF-8
    or JSON (NaN/Infinity, nesting deeper than the library's limit), an unknown dtype, a shape or
    offsets that are not non-negative 64-bit integers, a size that overflows or does not match the
    offsets, overlapping or gapped offsets, data not covering the rest of the file exactly, a
    ``__metadata__`` that is not a str -> str mapping.
    """
    # Checked before opening too: opening a FIFO for reading blocks until someone writes to it.
    if not stat.S_ISREG(os.stat(path).st_mode):
        raise ValueError(f"{path}: not a regular file")
    with open(path, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"{path}: not a regular file")
        size = st.st_size
        head = f.read(8)
        if len(head) < 8:
            raise corrupt(path, f"{size} bytes, shorter than the 8-byte header length")
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER:
            raise corrupt(path, f"header length {n} is over the format's limit of {MAX_HEADER} bytes")
        if 8 + n > size:
            raise corrupt(path, f"header length {n} runs past the end of the file ({size} bytes)")
        raw = f.read(n)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise corrupt(path, f"header is not valid UTF-8: {exc}") from None
    try:
        header = json.loads(text, object_pairs_hook=_unique_object, parse_constant=_no_constant)
    except _DuplicateKey as exc:
        raise corrupt(path, f"header is not valid: key {exc.key!r} appears twice in one JSON object (tensor names "
                            f"and fields must be unique)") from None
    except RecursionError:
        raise corrupt(path, f"header is not valid: JSON nested deeper than {MAX_DEPTH} levels") from None
    except ValueError as exc:  # JSONDecodeError, NaN/Infinity, integers with too many digits
        raise corrupt(path, f"header is not valid JSON: {str(exc)[:200]}") from None
    if not isinstance(header, dict):
        raise corrupt(path, f"header is not a JSON object (got {type(header).__name__})")
    why = _nesting_problem(header)
    if why is not None:
        raise corrupt(path, f"header is not valid: {why}")
    metadata = header.pop("__metadata__", None)
    if metadata is not None and not (isinstance(metadata, dict)
                                     and all(isinstance(v, str) for v in metadata.values())):
        raise corrupt(path, f"__metadata__ must be a str -> str mapping, got {_short(metadata)}")
    infos = [_parse_entry(path, name, entry) for name, entry in header.items()]
    # The data region is exactly the tensors laid end to end: no overlap (two tensors sharing
    # bytes), no gap (bytes no tensor owns), nothing after the last one.
    infos.sort(key=lambda i: (i.begin, i.end))
    data_size = size - 8 - n
    pos, prev = 0, None
    for info in infos:
        if info.begin < pos:
            raise corrupt(path, f"tensor {info.name!r}: data_offsets [{info.begin}, {info.end}] overlap tensor "
                                f"{prev.name!r} [{prev.begin}, {prev.end}]")
        if info.begin > pos:
            after = f"tensor {prev.name!r} ends" if prev is not None else "the data starts"
            raise corrupt(path, f"tensor {info.name!r}: data_offsets [{info.begin}, {info.end}] leave a gap: "
                                f"{after} at byte {pos}")
        pos, prev = info.end, info
    if pos > data_size:
        raise corrupt(path, f"tensor {prev.name!r} ends at byte {pos} but the file holds only {data_size} bytes "
                            f"of tensor data")
    if pos < data_size:
        raise corrupt(path, f"{data_size - pos} bytes after the last tensor are not covered by the header "
                            f"(tensors end at byte {pos} of {data_size})")
    return infos, metadata, 8 + n


class SafetensorsReader:
    """Memory-mapped, one-tensor-at-a-time reader of a validated safetensors file.

    ``tensor(name)`` is a zero-copy view of the file (pages are read on touch); ``release(name)``
    tells the kernel to drop those pages from this process so resident memory does not grow with
    the checkpoint. Use as a context manager.

    ``torch.nn.utils.prune`` pairs (``X_orig`` + ``X_mask``) are read as their pruned tensor ``X``
    (``X_orig * X_mask``), at ``X_orig``'s place: ``infos``/``by_name`` list what a reader of the
    model sees, ``file_infos`` what the file holds.
    """

    def __init__(self, path: str):
        from .torch_io import pruned_pairs

        self.path = path
        self.file_infos, self.metadata, self._start = read_header(path)
        self._file_by_name = {i.name: i for i in self.file_infos}
        self.pruned = pruned_pairs({i.name: i.file_shape for i in self.file_infos}, path)
        skip = {mask for _, mask in self.pruned.values()}
        base_of = {orig: base for base, (orig, _) in self.pruned.items()}
        self.infos = [replace(i, name=base_of[i.name]) if i.name in base_of else i
                      for i in self.file_infos if i.name not in skip]
        self.by_name = {i.name: i for i in self.infos}
        self._file = open(path, "rb")
        size = os.fstat(self._file.fileno()).st_size
        # ACCESS_COPY: a private mapping gives writable buffers (torch.frombuffer warns on
        # read-only ones) while the file itself can never be modified through it.
        self._mm = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_COPY) if size else None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        if self._mm is not None:
            try:
                self._mm.close()
            except BufferError:  # a caller still holds a view: the GC unmaps it later
                pass
            self._mm = None
        self._file.close()

    def _stored(self, info: TensorInfo) -> torch.Tensor:
        dtype, shape = info.dtype, info.shape
        if info.nbytes == 0:
            return torch.empty(shape, dtype=dtype)
        offset = self._start + info.begin
        flat = torch.frombuffer(self._mm, dtype=torch.uint8, count=info.nbytes, offset=offset)
        if offset % dtype.itemsize:
            # The format does not align tensors (an unpadded header or odd-sized tensors before
            # this one shift it): copy into an aligned buffer rather than hand out a misaligned view.
            flat = flat.clone()
        return flat.view(dtype).reshape(shape)

    def tensor(self, name: str) -> torch.Tensor:
        """CPU tensor of ``name`` with its stored dtype and shape (zero-copy unless pruned/misaligned)."""
        if name in self.pruned:
            from .torch_io import apply_prune_mask

            orig, mask = self.pruned[name]
            return apply_prune_mask(self._stored(self._file_by_name[orig]), self._stored(self._file_by_name[mask]),
                                    orig, mask, self.path)
        if name not in self.by_name:
            raise KeyError(f"{self.path}: no tensor {name!r}")
        return self._stored(self.by_name[name])

    def raw(self, name: str) -> memoryview:
        if name in self.pruned:
            t = self.tensor(name)
            return memoryview(t.reshape(-1).view(torch.uint8).numpy()) if t.numel() else memoryview(b"")
        info = self.by_name[name]
        return memoryview(self._mm)[self._start + info.begin:self._start + info.end]

    def release(self, name: str, upto: int | None = None) -> None:
        """Drop the resident pages of ``name`` (its first ``upto`` bytes only, if given).

        Harmless if they are touched again: the mapping is private and never written, so the
        kernel re-reads them from the file.
        """
        if name in self.pruned:
            if upto is None:  # the product was computed in full: both inputs are done
                for part in self.pruned[name]:
                    self._release(self._file_by_name[part], None)
            return
        self._release(self.by_name[name], upto)

    def _release(self, info: TensorInfo, upto: int | None) -> None:
        if self._mm is None or info.nbytes == 0 or not hasattr(mmap, "MADV_DONTNEED"):
            return
        page = mmap.PAGESIZE
        lo = (self._start + info.begin) // page * page
        hi = self._start + info.begin + (info.nbytes if upto is None else min(upto, info.nbytes))
        if upto is not None:
            hi = hi // page * page  # keep the partly processed page
        if hi <= lo:
            return
        try:
            self._mm.madvise(mmap.MADV_DONTNEED, lo, hi - lo)
        except (OSError, ValueError):  # advisory only
            pass


def _check_le():
    if struct.pack("=I", 1) != struct.pack("<I", 1):
        raise RuntimeError("safetensors streaming writer needs a little-endian machine")


class SafetensorsWriter:
    """Writes a safetensors file tensor by tensor in the order given by ``entries``.

    ``entries``: ``[(name, dtype, shape)]``; ``write(name, chunk)`` appends bytes of the current
    tensor (chunks in row-major order, any number of them); ``finish()`` checks every tensor was
    written completely. The caller owns atomicity (write to a temp file, then rename).
    """

    def __init__(self, fileobj, entries: list[tuple[str, torch.dtype, tuple[int, ...]]],
                 metadata: dict[str, str] | None):
        _check_le()
        self._f = fileobj
        header: dict = {}
        if metadata:
            header["__metadata__"] = dict(metadata)
        self._sizes: list[tuple[str, int]] = []
        offset = 0
        for name, dtype, shape in entries:
            if dtype not in TAGS:
                raise ValueError(f"tensor {name!r}: dtype {dtype} cannot be stored in safetensors")
            numel = 1
            for s in shape:
                numel *= int(s)
            nbytes = numel * dtype.itemsize
            file_shape = [int(s) for s in shape]
            if dtype in _PACKED:  # the format counts elements, torch counts packed groups
                if not file_shape:
                    raise ValueError(f"tensor {name!r}: a 0-d {dtype} cannot be stored in safetensors")
                file_shape[-1] *= _PACKED[dtype]
            header[name] = {"dtype": TAGS[dtype], "shape": file_shape, "data_offsets": [offset, offset + nbytes]}
            self._sizes.append((name, nbytes))
            offset += nbytes
        raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
        raw += b" " * (-len(raw) % 8)  # the reference writer pads the header to 8-byte alignment
        self._f.write(struct.pack("<Q", len(raw)))
        self._f.write(raw)
        self._idx = 0
        self._written = 0

    def write(self, name: str, chunk) -> None:
        """Append ``chunk`` (tensor, memoryview or bytes) to tensor ``name``."""
        # Tensors already complete (or empty) are passed over when the next name arrives.
        while (self._idx < len(self._sizes) and self._sizes[self._idx][0] != name
               and self._written == self._sizes[self._idx][1]):
            self._idx += 1
            self._written = 0
        if self._idx >= len(self._sizes) or self._sizes[self._idx][0] != name:
            expected = self._sizes[self._idx][0] if self._idx < len(self._sizes) else "<end of file>"
            raise RuntimeError(f"safetensors writer: got tensor {name!r} out of order, expected {expected!r}")
        if isinstance(chunk, torch.Tensor):
            chunk = chunk.detach().contiguous().reshape(-1).view(torch.uint8).numpy()
        n = chunk.nbytes if hasattr(chunk, "nbytes") else len(chunk)
        if self._written + n > self._sizes[self._idx][1]:
            raise RuntimeError(f"safetensors writer: tensor {name!r} got more bytes than its shape holds")
        self._f.write(chunk)
        self._written += n

    def finish(self) -> None:
        """Check that every tensor was written completely."""
        while self._idx < len(self._sizes) and self._written == self._sizes[self._idx][1]:
            self._idx += 1
            self._written = 0
        if self._idx < len(self._sizes):
            raise RuntimeError(f"safetensors writer: tensor {self._sizes[self._idx][0]!r} was not written completely")


def copy_raw(writer: SafetensorsWriter, name: str, view: memoryview, consumed=None) -> None:
    """Copy a tensor's bytes verbatim (bit-identical), ``COPY_CHUNK`` bytes at a time;
    ``consumed(nbytes)`` (optional) hears how many leading bytes are done after each chunk."""
    if len(view) == 0:
        writer.write(name, b"")
        return
    for lo in range(0, len(view), COPY_CHUNK):
        writer.write(name, view[lo:lo + COPY_CHUNK])
        if consumed is not None:
            consumed(min(lo + COPY_CHUNK, len(view)))
