// The cpublas::brgemm path of the native block-sparse matmuls (csrc/cpu/bsr_brgemm.cpp): fp32, blocks
// of 16, and bf16/fp16 wherever the tile kernels do not run but oneDNN can pack the operands.
#pragma once

#include <ATen/ATen.h>

namespace sparse_ext::bsr {

// Contracts as bsr_dds_cpu / bsr_sdd_cpu (sparse/bsr_cpu.h) with checked, contiguous a and data and an
// fp32 bias (or nullptr); l, r are op(a), op(b) (views).
at::Tensor dds_brgemm(const at::Tensor& a, const at::Tensor& data, const at::Tensor& seg, const at::Tensor& idx,
                      const at::Tensor& dptr, bool trans_w, int64_t m_tile, const float* bias);
at::Tensor sdd_brgemm(const at::Tensor& l, const at::Tensor& r, const at::Tensor& crow, const at::Tensor& col,
                      int64_t bs, int64_t k_tile);

}  // namespace sparse_ext::bsr
