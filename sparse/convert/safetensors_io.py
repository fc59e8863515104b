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
import struct
from dataclasses import dataclass

import torch

# safetensors dtype tag <-> torch dtype (explicit registry; unknown tags are a corrupt-file error).
DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "U16": torch.uint16, "U32": torch.uint32, "U64": torch.uint64,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}
TAGS: dict[torch.dtype, str] = {v: k for k, v in DTYPES.items()}

_MAX_HEADER = 100 * 1024 * 1024  # the safetensors spec's own limit
COPY_CHUNK = 16 * 1024 * 1024    # bytes per write when copying a tensor verbatim


def corrupt(path: str, what: str) -> ValueError:
    return ValueError(f"{path}: corrupt or truncated safetensors file ({what})")


@dataclass(frozen=True)
class TensorInfo:
    """One tensor's entry in a safetensors header; ``begin``/``end`` are byte offsets in the data."""
    name: str
    tag: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.tag]

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


def read_header(path: str) -> tuple[list[TensorInfo], dict[str, str] | None, int]:
    """Parse and validate a safetensors header.

    Returns ``(tensors in data order, metadata or None, data start offset)``. Every inconsistency
    (short file, bad JSON, unknown dtype, offsets that do not match shapes or run past the end of
    the file) raises one ``ValueError`` naming the file.
    """
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise corrupt(path, f"{size} bytes, shorter than the 8-byte header length")
        (n,) = struct.unpack("<Q", head)
        if n > _MAX_HEADER or 8 + n > size:
            raise corrupt(path, f"header length {n} does not fit in a file of {size} bytes")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise corrupt(path, f"header is not valid JSON: {exc}") from None
    if not isinstance(header, dict):
        raise corrupt(path, "header is not a JSON object")
    metadata = header.pop("__metadata__", None)
    if metadata is not None and not (isinstance(metadata, dict)
                                     and all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())):
        raise corrupt(path, "__metadata__ is not a str -> str mapping")
    data_size = size - 8 - n
    infos = []
    for name, entry in header.items():
        try:
            tag, shape, (begin, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
        except (TypeError, KeyError, ValueError):
            raise corrupt(path, f"tensor {name!r} has a malformed entry") from None
        if tag not in DTYPES:
            raise corrupt(path, f"tensor {name!r} has unknown dtype {tag!r}")
        if not (isinstance(shape, list) and all(isinstance(s, int) and s >= 0 for s in shape)):
            raise corrupt(path, f"tensor {name!r} has a bad shape {shape!r}")
        info = TensorInfo(name, tag, tuple(shape), int(begin), int(end))
        want = info.numel * DTYPES[tag].itemsize
        if not (0 <= info.begin <= info.end) or info.nbytes != want:
            raise corrupt(path, f"tensor {name!r}: offsets {begin}..{end} do not match shape {shape} {tag}")
        if info.end > data_size:
            raise corrupt(path, f"tensor {name!r} ends at byte {info.end} but the data holds only "
                                f"{data_size} bytes")
        infos.append(info)
    infos.sort(key=lambda i: (i.begin, i.end))
    return infos, metadata, 8 + n


class SafetensorsReader:
    """Memory-mapped, one-tensor-at-a-time reader of a validated safetensors file.

    ``tensor(name)`` is a zero-copy view of the file (pages are read on touch); ``release(name)``
    tells the kernel to drop those pages from this process so resident memory does not grow with
    the checkpoint. Use as a context manager.
    """

    def __init__(self, path: str):
        self.path = path
        self.infos, self.metadata, self._start = read_header(path)
        self.by_name = {i.name: i for i in self.infos}
        self._file = open(path, "rb")
        size = os.path.getsize(path)
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

    def tensor(self, name: str) -> torch.Tensor:
        """Zero-copy CPU tensor of ``name`` with its stored dtype and shape."""
        info = self.by_name[name]
        if info.numel == 0:
            return torch.empty(info.shape, dtype=info.dtype)
        flat = torch.frombuffer(self._mm, dtype=torch.uint8, count=info.nbytes, offset=self._start + info.begin)
        return flat.view(info.dtype).reshape(info.shape)

    def raw(self, name: str) -> memoryview:
        info = self.by_name[name]
        return memoryview(self._mm)[self._start + info.begin:self._start + info.end]

    def release(self, name: str, upto: int | None = None) -> None:
        """Drop the resident pages of ``name`` (its first ``upto`` bytes only, if given).

        Harmless if they are touched again: the mapping is private and never written, so the
        kernel re-reads them from the file.
        """
        info = self.by_name[name]
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
            header[name] = {"dtype": TAGS[dtype], "shape": [int(s) for s in shape],
                            "data_offsets": [offset, offset + nbytes]}
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
