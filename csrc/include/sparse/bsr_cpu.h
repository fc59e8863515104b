// Block-sparse (BSR) matmuls on the CPU, the entry points of sparse._C (csrc/cpu/bsr_ops.cpp). bf16 with
// blocks a multiple of 32 runs hand-written tile kernels (AMX or AVX512-BF16, csrc/cpu/bsr_tiles_*.cpp);
// everything else ATen's cpublas::brgemm (oneDNN ukernels, csrc/cpu/bsr_brgemm.cpp). Every kept block is
// multiplied where it lies in the dense operand: no gathers.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <string>
#include <vector>

namespace sparse_ext {

// True when the native path runs `dtype` with blocks of `block` here (block 0: some block size).
// fp32: always (brgemm takes row-major B); bf16 with B a multiple of 32: the AMX or AVX512-BF16 tile
// kernels; otherwise bf16/fp16 where could_pack says oneDNN has the VNNI/AMX ukernel.
bool bsr_brgemm_supported(at::ScalarType dtype, int64_t block = 0);

// Kernel families this CPU runs: "amx", "avx512bf16" (bf16 tile kernels), "brgemm" (always).
std::vector<std::string> bsr_cpu_kernels();

// out[T, J*B] (a's dtype) with, for every output block j and p in seg[j]..seg[j+1]:
//   out[:, jB:(j+1)B] += a[:, i B:(i+1)B] @ op(data[d]),  i = idx[p], d = dptr[p] (or p if dptr is empty),
//   op(w) = w^T if trans_w else w.
// a: [T, I*B] row-major (fp32/bf16/fp16); data: [nnz, B, B] same dtype; seg int32 [J+1];
// idx, dptr int32 [nnz] (idx ascending within each j). m_tile: tokens per task (>= 1).
// bias (optional) [J*B], any float dtype: added in fp32 before the rounding to the output dtype.
at::Tensor bsr_dds_cpu(const at::Tensor& a, const at::Tensor& data, const at::Tensor& seg,
                       const at::Tensor& idx, const at::Tensor& dptr, bool trans_w, int64_t m_tile,
                       const std::optional<at::Tensor>& bias);

// Kept blocks of L @ R -> [nnz, B, B] (L's dtype), L = a^T if trans_a else a ([M, K]),
// R = b^T if trans_b else b ([K, N]); block p is (crow-row of p, col[p]). Accumulates in fp32 over
// K in chunks of k_tile (rounded to the kernel's step).
// ccol/row_t/perm_t: the layout's transpose metadata (column-wise split of the work).
// colsum (optional, zeroed float32 [M]): receives L's row sums over K (the bias gradient of a linear
// layer when L = dY^T), fused into the pass that packs L.
at::Tensor bsr_sdd_cpu(const at::Tensor& a, const at::Tensor& b, const at::Tensor& crow,
                       const at::Tensor& col, const at::Tensor& ccol, const at::Tensor& row_t,
                       const at::Tensor& perm_t, int64_t block, bool trans_a, bool trans_b, int64_t k_tile,
                       const std::optional<at::Tensor>& colsum);

}  // namespace sparse_ext
