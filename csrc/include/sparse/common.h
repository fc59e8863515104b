// Shared definitions for code compiled both by the host C++ compiler and by nvcc.
#pragma once

#if defined(__CUDACC__)
#define SPARSE_HD __host__ __device__ __forceinline__
#else
#define SPARSE_HD inline
#endif

namespace sparse_ext {

// Largest m supported by the per-tile solvers (the Python API accepts 1 <= n < m <= 32).
constexpr int kMaxM = 32;
constexpr int kMaxNodes = 2 * kMaxM + 2;

}  // namespace sparse_ext
