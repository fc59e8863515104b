// Host-side pieces shared by the CPU and CUDA launchers of the 2:4 kernels (csrc/cpu/sparse24_cpu.cpp,
// csrc/cuda/sparse24_cuda.cu): the dtype dispatch, the argument check of a 2-D float matrix and of MVUE.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

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

// Checks of sparse24_mvue's arguments besides ``g`` itself, and its (seed, offset) pair read on the host.
struct MvueSeed {
  uint64_t seed, offset;
};

inline MvueSeed check_mvue_args(const at::Tensor& g, const at::Tensor& seed_offset, int64_t m, const char* fn) {
  TORCH_CHECK(m == 2 || m == 4, fn, ": m: expected 2 (1:2) or 4 (2:4), got ", m);
  TORCH_CHECK(g.size(1) % m == 0, fn, ": expected cols divisible by ", m, ", got ", g.sizes());
  TORCH_CHECK(seed_offset.device().is_cpu() && seed_offset.scalar_type() == at::kLong && seed_offset.numel() == 2,
              fn, ": seed_offset: expected an int64 CPU tensor of 2 elements");
  const auto so = seed_offset.contiguous();
  return {static_cast<uint64_t>(so.data_ptr<int64_t>()[0]), static_cast<uint64_t>(so.data_ptr<int64_t>()[1])};
}

}  // namespace sparse_ext
