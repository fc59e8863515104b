"""Triton block-sparse matmul kernels (SDD, DSD, DDS). Imported lazily by the launchers.

``TRITON_INTERPRET`` is read by triton when these kernels are decorated, i.e. when this module is
first imported, so nothing else imports it eagerly.

Common conventions: dense operands are 3-D ``[Z, rows, cols]`` (leading dims flattened, any strides);
sparse block data is ``[Z or 1, nnz, B, B]`` addressed through ``stride_dz`` (0 when shared across the
batch), ``stride_dp`` (between blocks) and two in-block strides (swapped by the launcher to read a
block transposed). Accumulation is fp32; ``DOT_F32`` casts tiles to fp32 before ``tl.dot`` (needed in
the interpreter, whose bf16 ``tl.dot`` is wrong); ``IEEE`` keeps fp32 inputs exact (no tf32).

Indices are clamped where they are loaded (block pointers to [0, NNZ], block indices to [0, count-1]):
the launchers do not read index values (a host sync per launch), so a bad layout passed to them
directly gives wrong numbers but never an access outside the operands. Valid layouts are unchanged
by the clamp; :mod:`sparse.ops` validates them before launching.

Only triton builtins are called (``tl.full``, not ``tl.zeros``): the stdlib helpers are ``@jit``
functions decorated when triton is imported, and if that happened before ``TRITON_INTERPRET=1`` was set
(torch imports triton on its own) the interpreter refuses to call them.
"""
import triton
import triton.language as tl


@triton.jit
def _mma(acc, a, b, DOT_F32: tl.constexpr, IEEE: tl.constexpr):
    """acc + a @ b in fp32. IEEE: exact fp32 products (fp32 inputs; tf32 would lose ~3 digits)."""
    if DOT_F32:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    if IEEE:
        return acc + tl.dot(a, b, input_precision="ieee")
    return acc + tl.dot(a, b)


@triton.jit
def _dsd_kernel(data_ptr, seg_ptr, idx_ptr, dptr_ptr, b_ptr, c_ptr,
                N, NNZ, KB,
                stride_dz, stride_dp, stride_d0, stride_d1,
                stride_bz, stride_bk, stride_bn,
                stride_cz, stride_cm, stride_cn,
                BLOCK: tl.constexpr, BLOCK_N: tl.constexpr, INDIRECT: tl.constexpr,
                DOT_F32: tl.constexpr, IEEE: tl.constexpr):
    """C[z, m-block, n-tile] = sum over the blocks of sparse row m of S_blk @ B[z, k-block, n-tile].
    NNZ: blocks in the data; KB: block rows of B."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_z = tl.program_id(2).to(tl.int64)
    start = tl.minimum(tl.maximum(tl.load(seg_ptr + pid_m), 0), NNZ)
    end = tl.minimum(tl.maximum(tl.load(seg_ptr + pid_m + 1), start), NNZ)
    offs_r = tl.arange(0, BLOCK)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    acc = tl.full((BLOCK, BLOCK_N), 0.0, tl.float32)  # not tl.zeros: see module doc
    for i in range(0, end - start):
        p = start + i  # a tensor, also in the interpreter
        kb = tl.minimum(tl.maximum(tl.load(idx_ptr + p), 0), KB - 1).to(tl.int64)
        if INDIRECT:
            d = tl.minimum(tl.maximum(tl.load(dptr_ptr + p), 0), NNZ - 1).to(tl.int64)
        else:
            d = p.to(tl.int64)
        a = tl.load(data_ptr + pid_z * stride_dz + d * stride_dp
                    + offs_r[:, None] * stride_d0 + offs_r[None, :] * stride_d1)
        b = tl.load(b_ptr + pid_z * stride_bz + (kb * BLOCK + offs_r)[:, None] * stride_bk
                    + offs_n[None, :] * stride_bn, mask=mask_n[None, :], other=0.0)
        acc = _mma(acc, a, b, DOT_F32, IEEE)
    offs_m = pid_m.to(tl.int64) * BLOCK + offs_r
    tl.store(c_ptr + pid_z * stride_cz + offs_m[:, None] * stride_cm + offs_n[None, :] * stride_cn,
             acc.to(c_ptr.dtype.element_ty), mask=mask_n[None, :])


@triton.jit
def _dds_kernel(a_ptr, data_ptr, seg_ptr, idx_ptr, dptr_ptr, c_ptr,
                M, NNZ, KB,
                stride_az, stride_am, stride_ak,
                stride_dz, stride_dp, stride_d0, stride_d1,
                stride_cz, stride_cm, stride_cn,
                BLOCK: tl.constexpr, BLOCK_M: tl.constexpr, INDIRECT: tl.constexpr,
                DOT_F32: tl.constexpr, IEEE: tl.constexpr):
    """C[z, m-tile, n-block] = sum over the blocks of sparse column n of A[z, m-tile, k-block] @ S_blk.
    NNZ: blocks in the data; KB: block columns of A."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_z = tl.program_id(2).to(tl.int64)
    start = tl.minimum(tl.maximum(tl.load(seg_ptr + pid_n), 0), NNZ)
    end = tl.minimum(tl.maximum(tl.load(seg_ptr + pid_n + 1), start), NNZ)
    offs_c = tl.arange(0, BLOCK)
    offs_m = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < M
    acc = tl.full((BLOCK_M, BLOCK), 0.0, tl.float32)  # not tl.zeros: see module doc
    for i in range(0, end - start):
        p = start + i  # a tensor, also in the interpreter
        kb = tl.minimum(tl.maximum(tl.load(idx_ptr + p), 0), KB - 1).to(tl.int64)
        if INDIRECT:
            d = tl.minimum(tl.maximum(tl.load(dptr_ptr + p), 0), NNZ - 1).to(tl.int64)
        else:
            d = p.to(tl.int64)
        a = tl.load(a_ptr + pid_z * stride_az + offs_m[:, None] * stride_am
                    + (kb * BLOCK + offs_c)[None, :] * stride_ak, mask=mask_m[:, None], other=0.0)
        s = tl.load(data_ptr + pid_z * stride_dz + d * stride_dp
                    + offs_c[:, None] * stride_d0 + offs_c[None, :] * stride_d1)
        acc = _mma(acc, a, s, DOT_F32, IEEE)
    offs_n = pid_n.to(tl.int64) * BLOCK + offs_c
    tl.store(c_ptr + pid_z * stride_cz + offs_m[:, None] * stride_cm + offs_n[None, :] * stride_cn,
             acc.to(c_ptr.dtype.element_ty), mask=mask_m[:, None])


@triton.jit
def _sdd_kernel(a_ptr, b_ptr, row_ptr, col_ptr, c_ptr,
                K, RB, CB,
                stride_az, stride_am, stride_ak,
                stride_bz, stride_bk, stride_bn,
                stride_cz, stride_cp, stride_cr, stride_cc,
                BLOCK: tl.constexpr, BLOCK_K: tl.constexpr, DOT_F32: tl.constexpr, IEEE: tl.constexpr):
    """C[z, p] = A[z, row_p-block, :] @ B[z, :, col_p-block] for each kept block p (full K reduction).
    RB, CB: block rows of A and block columns of B."""
    pid_p = tl.program_id(0).to(tl.int64)
    pid_z = tl.program_id(1).to(tl.int64)
    rb = tl.minimum(tl.maximum(tl.load(row_ptr + pid_p), 0), RB - 1).to(tl.int64)
    cb = tl.minimum(tl.maximum(tl.load(col_ptr + pid_p), 0), CB - 1).to(tl.int64)
    offs_b = tl.arange(0, BLOCK)
    offs_m = rb * BLOCK + offs_b
    offs_n = cb * BLOCK + offs_b
    acc = tl.full((BLOCK, BLOCK), 0.0, tl.float32)  # not tl.zeros: see module doc
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask_k = offs_k < K
        a = tl.load(a_ptr + pid_z * stride_az + offs_m[:, None] * stride_am + offs_k[None, :] * stride_ak,
                    mask=mask_k[None, :], other=0.0)
        b = tl.load(b_ptr + pid_z * stride_bz + offs_k[:, None] * stride_bk + offs_n[None, :] * stride_bn,
                    mask=mask_k[:, None], other=0.0)
        acc = _mma(acc, a, b, DOT_F32, IEEE)
    tl.store(c_ptr + pid_z * stride_cz + pid_p * stride_cp + offs_b[:, None] * stride_cr
             + offs_b[None, :] * stride_cc, acc.to(c_ptr.dtype.element_ty))
