// Launcher declarations: CPU (csrc/cpu) and CUDA (csrc/cuda, only with SPARSE_WITH_CUDA).
#pragma once

#include <ATen/ATen.h>

#include <utility>

// Runs body<T>() with T = float or double, the weight's dtype (the mask launchers check it first).
#define SPARSE_FLOAT_OR_DOUBLE(w, ...)      \
  [&] {                                     \
    if ((w).scalar_type() == at::kDouble) { \
      using T = double;                     \
      return __VA_ARGS__();                 \
    }                                       \
    using T = float;                        \
    return __VA_ARGS__();                   \
  }()

namespace sparse_ext {

// All take a contiguous float32 or float64 matrix W [R, C] (scores and comparisons in W's precision)
// with R, C multiples of m (for nm: C multiple of m) and return a torch.bool mask of the same shape
// (true = kept). Every argument is checked (TORCH_CHECK) before a kernel reads anything.
at::Tensor transposable_exact_cpu(const at::Tensor& w, int64_t n, int64_t m);
at::Tensor transposable_greedy_cpu(const at::Tensor& w, int64_t n, int64_t m);
at::Tensor transposable_approx_cpu(const at::Tensor& w, int64_t n, int64_t m, int64_t max_passes);
at::Tensor transposable_enum_cpu(const at::Tensor& w, int64_t n, int64_t m, const at::Tensor& combos,
                                    const at::Tensor& patterns);
at::Tensor nm_mask_cpu(const at::Tensor& w, int64_t n, int64_t m);

// The pattern tables of transposable_enum (combos int32 [C, n] with column indices in [0, m), patterns
// int32 [P >= 1, m] with combination indices in [0, C)), checked and returned as contiguous CPU copies.
std::pair<at::Tensor, at::Tensor> check_enum_tables(const at::Tensor& combos, const at::Tensor& patterns, int64_t n,
                                                    int64_t m, const char* fn);

#ifdef SPARSE_WITH_CUDA
at::Tensor transposable_exact_cuda(const at::Tensor& w, int64_t n, int64_t m);
at::Tensor transposable_greedy_cuda(const at::Tensor& w, int64_t n, int64_t m);
at::Tensor transposable_approx_cuda(const at::Tensor& w, int64_t n, int64_t m, int64_t max_passes);
at::Tensor transposable_enum_cuda(const at::Tensor& w, int64_t n, int64_t m, const at::Tensor& combos,
                                     const at::Tensor& patterns);
at::Tensor nm_mask_cuda(const at::Tensor& w, int64_t n, int64_t m);
#endif

}  // namespace sparse_ext
