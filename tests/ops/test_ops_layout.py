"""BlockLayout: construction from a block mask, transpose metadata, dense round trips, bad layouts, and the
operand checks every block-sparse backend relies on."""
import dataclasses

import pytest
import torch

from sparse.ops import BlockLayout
from sparse.ops.layout import check_dds, check_dsd, check_sdd


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


def test_operand_checks_name_the_argument():
    lay = _good()                                   # 32 x 48, block 16, nnz 4
    data = torch.randn(lay.nnz, 16, 16)
    assert check_dds(torch.randn(5, 32), data, lay) == (5, 48, ())
    assert check_dds(torch.randn(2, 5, 48), data, lay, trans_b=True) == (5, 32, (2,))
    assert check_dsd(data, lay, torch.randn(48, 7)) == (32, 7, ())
    assert check_dsd(data, lay, torch.randn(7, 32), trans_a=True, trans_b=True) == (48, 7, ())
    assert check_sdd(torch.randn(9, 32), torch.randn(9, 48), lay, trans_a=True) == (9, ())
    with pytest.raises(ValueError, match="layout: expected a sparse.ops.BlockLayout, got str"):
        check_dds(torch.randn(5, 32), data, "layout")
    with pytest.raises(ValueError, match=r"a: expected \[..., M, K\] with K=32"):
        check_dds(torch.randn(5, 31), data, lay)
    with pytest.raises(ValueError, match="b_data: expected dtype torch.float32"):
        check_dds(torch.randn(5, 32), data.half(), lay)
    with pytest.raises(ValueError, match=r"b_data: expected block data of shape \[..., nnz=4, 16, 16\]"):
        check_dds(torch.randn(5, 32), data[:, :8], lay)
    with pytest.raises(ValueError, match="a: expected dtype float32, float16 or bfloat16, got torch.float64"):
        check_dds(torch.randn(5, 32).double(), data, lay)
    with pytest.raises(ValueError, match=r"b_data: expected leading dims \(\) or \(2,\)"):
        check_dds(torch.randn(2, 5, 32), torch.randn(3, 4, 16, 16), lay)
    with pytest.raises(ValueError, match=r"b: expected \[..., K, N\] with K=48"):
        check_dsd(data, lay, torch.randn(32, 4))
    with pytest.raises(ValueError, match="a_data: expected a torch.Tensor, got list"):
        check_dsd([1, 2], lay, torch.randn(48, 2))
    with pytest.raises(ValueError, match=r"a, b: expected op\(a\) @ op\(b\) of shape \(32, 48\)"):
        check_sdd(torch.randn(32, 8), torch.randn(8, 32), lay)
    with pytest.raises(ValueError, match=r"b: expected inner dim K=8"):
        check_sdd(torch.randn(32, 8), torch.randn(9, 48), lay)
    with pytest.raises(ValueError, match="a, b: expected the same leading dims"):
        check_sdd(torch.randn(2, 32, 8), torch.randn(3, 8, 48), lay)
    with pytest.raises(ValueError, match="a: expected a tensor on the layout's device cpu, got meta"):
        check_dds(torch.randn(5, 32, device="meta"), data, lay)
