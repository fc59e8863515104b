// Launcher declarations: CPU (csrc/cpu) and CUDA (csrc/cuda, only with SPARSE_WITH_CUDA).
#pragma once

#include <torch/extension.h>

namespace sparse_ext {

// All take a contiguous float32 matrix W [R, C] with R, C multiples of m (for nm: C multiple of m)
// and return a uint8 mask of the same shape (1 = kept).
torch::Tensor transposable_exact_cpu(const torch::Tensor& w, int64_t n, int64_t m);
torch::Tensor transposable_approx_cpu(const torch::Tensor& w, int64_t n, int64_t m, int64_t max_passes);
torch::Tensor transposable_enum_cpu(const torch::Tensor& w, int64_t n, int64_t m, const torch::Tensor& combos,
                                    const torch::Tensor& patterns);
torch::Tensor nm_mask_cpu(const torch::Tensor& w, int64_t n, int64_t m);

#ifdef SPARSE_WITH_CUDA
torch::Tensor transposable_exact_cuda(const torch::Tensor& w, int64_t n, int64_t m);
torch::Tensor transposable_approx_cuda(const torch::Tensor& w, int64_t n, int64_t m, int64_t max_passes);
torch::Tensor transposable_enum_cuda(const torch::Tensor& w, int64_t n, int64_t m, const torch::Tensor& combos,
                                     const torch::Tensor& patterns);
torch::Tensor nm_mask_cuda(const torch::Tensor& w, int64_t n, int64_t m);
#endif

}  // namespace sparse_ext
