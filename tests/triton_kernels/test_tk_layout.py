"""BlockLayout: construction from a block mask, transpose metadata, dense round trips, bad layouts."""
import dataclasses

import pytest
import torch

from triton_kernels import BlockLayout


def _mask(r=4, c=5, p=0.5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(r, c, generator=g) < p


def test_from_mask_csr_and_transpose_metadata():
    mask = torch.tensor([[1, 0, 1], [0, 0, 0], [1, 1, 0]], dtype=torch.bool)
    lay = BlockLayout.from_mask(mask, 16)
    assert lay.shape == (48, 48) and lay.nnz == 4 and lay.block_shape == (3, 3)
    assert lay.crow.tolist() == [0, 2, 2, 4]
    assert lay.col.tolist() == [0, 2, 0, 1]
    assert lay.row.tolist() == [0, 0, 2, 2]
    assert lay.ccol.tolist() == [0, 2, 3, 4]
    assert lay.row_t.tolist() == [0, 2, 2, 0]
    assert lay.perm_t.tolist() == [0, 2, 3, 1]
    assert all(t.dtype == torch.int32 for t in lay.tensors())
    assert torch.equal(lay.mask(), mask)


@pytest.mark.parametrize("block", [16, 32, 64, 128])
def test_dense_round_trip(block):
    mask = _mask(3, 2, seed=block)
    lay = BlockLayout.from_mask(mask, block)
    w = torch.randn(3 * block, 2 * block)
    data = lay.from_dense(w)
    assert data.shape == (lay.nnz, block, block)
    dense = lay.to_dense(data)
    keep = mask.repeat_interleave(block, 0).repeat_interleave(block, 1)
    assert torch.equal(dense, w * keep)
    batched = torch.stack([data, 2 * data])
    assert torch.equal(lay.to_dense(batched)[1], 2 * dense)


def test_empty_layout():
    lay = BlockLayout.from_mask(torch.zeros(2, 3, dtype=torch.bool), 32)
    assert lay.nnz == 0 and lay.crow.tolist() == [0, 0, 0] and lay.ccol.tolist() == [0, 0, 0, 0]
    assert torch.equal(lay.to_dense(torch.zeros(0, 32, 32)), torch.zeros(64, 96))


def test_bad_mask_and_block_rejected():
    with pytest.raises(ValueError, match="block_mask: expected a 2-D torch.bool"):
        BlockLayout.from_mask(torch.ones(2, 2), 16)
    with pytest.raises(ValueError, match="block_mask"):
        BlockLayout.from_mask(torch.ones(2, 2, 2, dtype=torch.bool), 16)
    with pytest.raises(ValueError, match=r"block: expected one of \(16, 32, 64, 128\), got 24"):
        BlockLayout.from_mask(torch.ones(2, 2, dtype=torch.bool), 24)
    with pytest.raises(ValueError, match="block: expected"):
        BlockLayout.from_mask(torch.ones(2, 2, dtype=torch.bool), True)


def _good():
    return BlockLayout.from_mask(torch.tensor([[1, 1, 0], [0, 1, 1]], dtype=torch.bool), 16)


@pytest.mark.parametrize("field, value, message", [
    ("crow", torch.tensor([0, 2, 3], dtype=torch.int32), "crow: expected non-decreasing pointers from 0 to nnz=4"),
    ("crow", torch.tensor([0, 3, 4], dtype=torch.int32), "row: expected the block row"),
    ("crow", torch.tensor([0, 2, 4], dtype=torch.int64), "crow: expected a 1-D torch.int32"),
    ("crow", torch.tensor([0, 4], dtype=torch.int32), "crow: expected 3 entries"),
    ("col", torch.tensor([1, 0, 1, 2], dtype=torch.int32), "strictly ascending block columns"),
    ("col", torch.tensor([0, 0, 1, 2], dtype=torch.int32), "duplicates"),
    ("col", torch.tensor([0, 1, 1, 3], dtype=torch.int32), r"col: expected block columns in \[0, 3\)"),
    ("perm_t", torch.tensor([0, 0, 2, 3], dtype=torch.int32), "perm_t: expected a permutation"),
    ("perm_t", torch.tensor([0, 2, 1, 3], dtype=torch.int32), "transpose metadata does not describe"),
    ("row_t", torch.tensor([0, 0, 1, 7], dtype=torch.int32), r"row_t: expected block rows in \[0, 2\)"),
    ("ccol", torch.tensor([0, 1, 3, 3], dtype=torch.int32), "ccol: expected non-decreasing pointers from 0 to nnz=4"),
    ("shape", (32, 40), "shape: expected .*multiples of block=16"),
    ("block", 8, "block: expected one of"),
])
def test_bad_layouts_rejected(field, value, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(_good(), **{field: value})


def test_to_from_dense_shape_errors():
    lay = _good()
    with pytest.raises(ValueError, match=r"data: expected block data of shape \[..., nnz=4, 16, 16\]"):
        lay.to_dense(torch.zeros(3, 16, 16))
    with pytest.raises(ValueError, match=r"dense: expected shape \[..., 32, 48\]"):
        lay.from_dense(torch.zeros(48, 32))
