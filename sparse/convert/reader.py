"""Read any supported checkpoint one tensor at a time (shared by conversion and ``sparse inspect``)."""
from __future__ import annotations

import os
from typing import Iterator

import torch

from .safetensors_io import SafetensorsReader
from .sources import resolve_source
from .torch_io import load_state_dict


def iter_tensors(path: str) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(name, tensor)`` for every tensor of the checkpoint at ``path``, in file order.

    Safetensors tensors are zero-copy views of a memory map, valid only until the next item: clone
    one to keep it.
    """
    source = resolve_source(os.fspath(path))
    for shard in source.shards:
        if shard.kind == "safetensors":
            with SafetensorsReader(shard.path) as reader:
                for info in reader.infos:
                    yield info.name, reader.tensor(info.name)
                    reader.release(info.name)
        else:
            yield from load_state_dict(shard.path).items()


def nonzero_mask(t: torch.Tensor) -> torch.Tensor:
    """Which elements of ``t`` are non-zero, as a bool tensor, for every dtype a checkpoint holds.

    torch lacks ``count_nonzero`` for uint16/32/64 and float8 and has no arithmetic at all for
    float4; counting through this helper works for all of them. ``float4_e2m1fn_x2`` packs two
    values per element, so its mask has the unpacked shape (last dimension doubled, low nibble
    first). ``-0.0`` counts as zero; float8_e8m0fnu has no zero.
    """
    if t.is_quantized:
        return t.dequantize() != 0
    if t.dtype == torch.float4_e2m1fn_x2:
        b = t.view(torch.uint8)
        # e2m1 nibble: bit 3 is the sign, the value is zero iff the other three bits are.
        nz = torch.stack(((b & 0x07) != 0, (b & 0x70) != 0), -1)
        return nz.flatten(-2) if t.dim() else nz
    if t.dtype == torch.float8_e8m0fnu:
        # a power-of-two scale format without a zero (``t != 0`` casts 0 to its smallest value, 2**-127)
        return torch.ones(t.shape, dtype=torch.bool)
    return t != 0


def list_tensors(path: str) -> list[tuple[str, torch.dtype, tuple[int, ...]]]:
    """``[(name, dtype, shape)]`` of every tensor, reading only headers where the format allows."""
    source = resolve_source(os.fspath(path))
    out = []
    for shard in source.shards:
        if shard.kind == "safetensors":
            with SafetensorsReader(shard.path) as reader:
                out += [(i.name, i.dtype, i.shape) for i in reader.infos]
        else:
            out += [(k, v.dtype, tuple(v.shape)) for k, v in load_state_dict(shard.path).items()]
    return out
