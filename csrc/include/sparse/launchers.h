// Launcher declarations: CPU (csrc/cpu) and CUDA (csrc/cuda, only with SPARSE_WITH_CUDA).
#pragma once

#include <ATen/ATen.h>

namespace sparse_ext {

// All take a contiguous float32 matrix W [R, C] with R, C multiples of m (for nm: C multiple of m)
// and return a torch.bool mask of the same shape (true = kept).
at::Tensor transposable_exact_cpu(const at::Tensor& w, int64_t n, int64_t m);
at::Tensor transposable_greedy_cpu(const at::Tensor& w, int64_t n, int64_t m);
at::Tensor transposable_approx_cpu(const at::Tensor& w, int64_t n, int64_t m, int64_t max_passes);
at::Tensor transposable_enum_cpu(const at::Tensor& w, int64_t n, int64_t m, const at::Tensor& combos,
                                    const at::Tensor& patterns);
at::Tensor nm_mask_cpu(const at::Tensor& w, int64_t n, int64_t m);

#ifdef SPARSE_WITH_CUDA
at::Tensor transposable_exact_cuda(const at::Tensor& w, int64_t n, int64_t m);
at::Tensor transposable_greedy_cuda(const at::Tensor& w, int64_t n, int64_t m);
at::Tensor transposable_approx_cuda(const at::Tensor& w, int64_t n, int64_t m, int64_t max_passes);
at::Tensor transposable_enum_cuda(const at::Tensor& w, int64_t n, int64_t m, const at::Tensor& combos,
                                     const at::Tensor& patterns);
at::Tensor nm_mask_cuda(const at::Tensor& w, int64_t n, int64_t m);
#endif

}  // namespace sparse_ext
