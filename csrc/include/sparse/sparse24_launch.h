// Host-side pieces shared by the CPU and CUDA launchers of the 2:4 kernels (csrc/cpu/sparse24_cpu.cpp,
// csrc/cuda/sparse24_cuda.cu): the dtype dispatch and the argument check of a 2-D float matrix.
#pragma once

#include <ATen/ATen.h>

// Runs body<T>() with T = float, c10::Half or c10::BFloat16 (the launchers check the dtype first).
#define SPARSE_S24_DISPATCH(dtype, ...)           \
  [&] {                                           \
    if ((dtype) == at::kHalf) {                   \
      using T = c10::Half;                        \
      return __VA_ARGS__();                       \
    }                                             \
    if ((dtype) == at::kBFloat16) {               \
      using T = c10::BFloat16;                    \
      return __VA_ARGS__();                       \
    }                                             \
    using T = float;                              \
    return __VA_ARGS__();                         \
  }()

namespace sparse_ext {

// ``t`` (argument ``arg`` of ``fn``) must be a contiguous 2-D float32/float16/bfloat16 matrix.
inline void check_float_matrix(const at::Tensor& t, const char* fn, const char* arg) {
  TORCH_CHECK(t.dim() == 2, fn, ": ", arg, ": expected a 2-D tensor, got ", t.dim(), "-D");
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kHalf || t.scalar_type() == at::kBFloat16,
              fn, ": ", arg, ": expected float32, float16 or bfloat16, got ", t.scalar_type());
  TORCH_CHECK(t.is_contiguous(), fn, ": ", arg, ": expected a contiguous tensor");
}

}  // namespace sparse_ext
