// CUDA launchers for the per-tile mask solvers: one thread per tile (or per group for 1-D N:M),
// running the same __host__ __device__ code the CPU launcher runs, in the weight's precision (float or
// double). Every argument is checked on the host before a kernel is launched.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <limits>

#include "sparse/launchers.h"
#include "sparse/transposable_tile.h"

namespace sparse_ext {
namespace {

constexpr int kThreads = 128;

void check_input(const at::Tensor& w, int64_t n, int64_t m, bool tiles, const char* fn) {
  TORCH_CHECK(w.is_cuda(), fn, ": expected a CUDA tensor, got ", w.device());
  TORCH_CHECK(w.dim() == 2, fn, ": expected a 2-D weight, got ", w.dim(), "-D");
  TORCH_CHECK(w.scalar_type() == at::kFloat || w.scalar_type() == at::kDouble, fn,
              ": expected float32 or float64, got ", w.scalar_type());
  TORCH_CHECK(w.is_contiguous(), fn, ": expected a contiguous tensor");
  TORCH_CHECK(1 <= n && n < m && m <= kMaxM, fn, ": expected 1 <= n < m <= ", kMaxM, ", got n=", n, " m=", m);
  TORCH_CHECK(w.size(1) % m == 0 && (!tiles || w.size(0) % m == 0), fn, ": shape ", w.sizes(),
              " not divisible by m=", m);
}

template <typename T>
__device__ __forceinline__ TileView<T> tile_at(const T* w, uint8_t* keep, int64_t t, int64_t tc, int64_t ld,
                                               int m) {
  const int64_t r0 = (t / tc) * m, c0 = (t % tc) * m;
  return TileView<T>{w + r0 * ld + c0, keep + r0 * ld + c0, ld};
}

template <typename T>
__global__ void _transposable_exact_kernel(const T* __restrict__ w, uint8_t* __restrict__ keep, int64_t tiles,
                                           int64_t tc, int64_t ld, int n, int m) {
  const int64_t t = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (t < tiles) tile_exact(tile_at(w, keep, t, tc, ld, m), n, m);
}

template <typename T>
__global__ void _transposable_greedy_kernel(const T* __restrict__ w, uint8_t* __restrict__ keep, int64_t tiles,
                                            int64_t tc, int64_t ld, int n, int m) {
  const int64_t t = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (t < tiles) tile_greedy_repair(tile_at(w, keep, t, tc, ld, m), n, m);
}

template <typename T>
__global__ void _transposable_approx_kernel(const T* __restrict__ w, uint8_t* __restrict__ keep, int64_t tiles,
                                            int64_t tc, int64_t ld, int n, int m, int max_passes) {
  const int64_t t = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (t < tiles) tile_approx(tile_at(w, keep, t, tc, ld, m), n, m, max_passes);
}

template <typename T>
__global__ void _transposable_enum_kernel(const T* __restrict__ w, uint8_t* __restrict__ keep, int64_t tiles,
                                          int64_t tc, int64_t ld, int n, int m, const int32_t* __restrict__ combos,
                                          int num_combos, const int32_t* __restrict__ patterns, int num_patterns) {
  const int64_t t = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (t < tiles) tile_enum(tile_at(w, keep, t, tc, ld, m), n, m, combos, num_combos, patterns, num_patterns);
}

template <typename T>
__global__ void _nm_mask_kernel(const T* __restrict__ w, uint8_t* __restrict__ keep, int64_t groups, int n, int m) {
  const int64_t g = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (g < groups) group_nm(w + g * m, keep + g * m, n, m);
}

// Blocks for `work` threads; refuses a grid larger than CUDA allows instead of launching a truncated one.
unsigned blocks_for(int64_t work, const char* fn) {
  const int64_t blocks = (work + kThreads - 1) / kThreads;
  TORCH_CHECK(blocks <= std::numeric_limits<int32_t>::max(), fn, ": ", work, " tiles/groups exceed one launch");
  return (unsigned)blocks;
}

}  // namespace

at::Tensor transposable_exact_cuda(const at::Tensor& w, int64_t n, int64_t m) {
  check_input(w, n, m, true, "transposable_exact");
  const c10::cuda::CUDAGuard guard(w.device());
  auto keep = at::empty(w.sizes(), w.options().dtype(at::kBool));
  const int64_t tc = w.size(1) / m, tiles = (w.size(0) / m) * tc;
  if (tiles == 0) return keep;
  const unsigned blocks = blocks_for(tiles, "transposable_exact");
  SPARSE_FLOAT_OR_DOUBLE(w, [&] {
    _transposable_exact_kernel<T><<<blocks, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        w.data_ptr<T>(), reinterpret_cast<uint8_t*>(keep.data_ptr<bool>()), tiles, tc, w.size(1), (int)n, (int)m);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return keep;
}

at::Tensor transposable_greedy_cuda(const at::Tensor& w, int64_t n, int64_t m) {
  check_input(w, n, m, true, "transposable_greedy");
  const c10::cuda::CUDAGuard guard(w.device());
  auto keep = at::empty(w.sizes(), w.options().dtype(at::kBool));
  const int64_t tc = w.size(1) / m, tiles = (w.size(0) / m) * tc;
  if (tiles == 0) return keep;
  const unsigned blocks = blocks_for(tiles, "transposable_greedy");
  SPARSE_FLOAT_OR_DOUBLE(w, [&] {
    _transposable_greedy_kernel<T><<<blocks, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        w.data_ptr<T>(), reinterpret_cast<uint8_t*>(keep.data_ptr<bool>()), tiles, tc, w.size(1), (int)n, (int)m);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return keep;
}

at::Tensor transposable_approx_cuda(const at::Tensor& w, int64_t n, int64_t m, int64_t max_passes) {
  check_input(w, n, m, true, "transposable_approx");
  TORCH_CHECK(0 <= max_passes && max_passes <= (1 << 20), "transposable_approx: max_passes: expected 0..",
              1 << 20, ", got ", max_passes);
  const c10::cuda::CUDAGuard guard(w.device());
  auto keep = at::empty(w.sizes(), w.options().dtype(at::kBool));
  const int64_t tc = w.size(1) / m, tiles = (w.size(0) / m) * tc;
  if (tiles == 0) return keep;
  const unsigned blocks = blocks_for(tiles, "transposable_approx");
  SPARSE_FLOAT_OR_DOUBLE(w, [&] {
    _transposable_approx_kernel<T><<<blocks, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        w.data_ptr<T>(), reinterpret_cast<uint8_t*>(keep.data_ptr<bool>()), tiles, tc, w.size(1), (int)n, (int)m,
        (int)max_passes);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return keep;
}

at::Tensor transposable_enum_cuda(const at::Tensor& w, int64_t n, int64_t m, const at::Tensor& combos,
                                  const at::Tensor& patterns) {
  check_input(w, n, m, true, "transposable_enum");
  TORCH_CHECK(m <= kMaxEnumM, "transposable_enum: m must be <= ", kMaxEnumM, ", got ", m);
  const auto tables = check_enum_tables(combos, patterns, n, m, "transposable_enum");  // on the host
  const c10::cuda::CUDAGuard guard(w.device());
  auto c = tables.first.to(w.device());
  auto p = tables.second.to(w.device());
  auto keep = at::empty(w.sizes(), w.options().dtype(at::kBool));
  const int64_t tc = w.size(1) / m, tiles = (w.size(0) / m) * tc;
  if (tiles == 0) return keep;
  const unsigned blocks = blocks_for(tiles, "transposable_enum");
  SPARSE_FLOAT_OR_DOUBLE(w, [&] {
    _transposable_enum_kernel<T><<<blocks, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        w.data_ptr<T>(), reinterpret_cast<uint8_t*>(keep.data_ptr<bool>()), tiles, tc, w.size(1), (int)n, (int)m,
        c.data_ptr<int32_t>(), (int)c.size(0), p.data_ptr<int32_t>(), (int)p.size(0));
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return keep;
}

at::Tensor nm_mask_cuda(const at::Tensor& w, int64_t n, int64_t m) {
  check_input(w, n, m, false, "nm_mask");
  const c10::cuda::CUDAGuard guard(w.device());
  auto keep = at::empty(w.sizes(), w.options().dtype(at::kBool));
  const int64_t groups = w.numel() / m;
  if (groups == 0) return keep;
  const unsigned blocks = blocks_for(groups, "nm_mask");
  SPARSE_FLOAT_OR_DOUBLE(w, [&] {
    _nm_mask_kernel<T><<<blocks, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        w.data_ptr<T>(), reinterpret_cast<uint8_t*>(keep.data_ptr<bool>()), groups, (int)n, (int)m);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return keep;
}

}  // namespace sparse_ext
