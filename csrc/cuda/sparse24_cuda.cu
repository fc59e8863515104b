// CUDA launchers of the 2:4 kernels. The per-group / per-tile / per-word code is the __host__ __device__ code of
// include/sparse/sparse24_tile.h that the CPU launcher (csrc/cpu/sparse24_cpu.cpp) runs and the CPU tests check;
// here it is only distributed over threads:
//  * compress (rows): one thread per 16-bit metadata word (16 elements of a row -> 8 values + 1 word);
//  * compress (exact transposable, fused): one block of 256 threads per 64x64 region of W, staged once in shared
//    memory: each thread solves one 4x4 tile (best of the 90 patterns), then each thread packs one W word and one
//    W^T word of the region from the tile masks, so W and W^T are compressed in one pass over W;
//  * mask / decompress / MVUE: one thread per tile / word / group.
// Every argument is checked on the host before a kernel is launched; (seed, offset) are read on the host.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <limits>
#include <vector>

#include "sparse/sparse24_launch.h"
#include "sparse/sparse24_tile.h"

namespace sparse_ext {
namespace {

constexpr int kThreads = 256;
constexpr int kRegion = 64;  // rows and columns of W per block of the fused transposable kernel

void check_float(const at::Tensor& t, const char* fn, const char* arg) {
  TORCH_CHECK(t.is_cuda(), fn, ": ", arg, ": expected a CUDA tensor, got ", t.device());
  check_float_matrix(t, fn, arg);
}

unsigned blocks_for(int64_t work, const char* fn) {
  const int64_t blocks = (work + kThreads - 1) / kThreads;
  TORCH_CHECK(blocks <= std::numeric_limits<int32_t>::max(), fn, ": ", work, " work items exceed one launch");
  return (unsigned)blocks;
}

// ------------------------------------------------------------------------------------------------ kernels
template <typename T>
__global__ void _s24_compress_rows_kernel(const T* __restrict__ w, T* __restrict__ values, uint16_t* __restrict__ meta,
                                          int64_t R, int64_t C) {
  const int64_t W16 = C / 16;
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= R * W16) return;
  const int64_t r = i / W16, c = i % W16;
  T seg[16];
  const T* src = w + r * C + 16 * c;
  for (int k = 0; k < 16; ++k) seg[k] = src[k];
  uint32_t keep = 0;
  for (int q = 0; q < 4; ++q) keep |= s24::top2_bits(seg + 4 * q) << (4 * q);
  meta[s24::cutlass_meta_offset(r, c, R)] = s24::pack_word(seg, keep, values + r * (C / 2) + 8 * c);
}

template <typename T>
__global__ void __launch_bounds__(kThreads) _s24_compress_transposable_kernel(
    const T* __restrict__ w, T* __restrict__ values, uint16_t* __restrict__ meta, T* __restrict__ values_t,
    uint16_t* __restrict__ meta_t, int64_t R, int64_t C) {
  constexpr int LD = kRegion + 1;  // +1: column reads of phase 3 hit distinct banks
  __shared__ __align__(16) unsigned char raw[kRegion * LD * sizeof(T)];
  __shared__ uint16_t tbits[kRegion / 4][kRegion / 4];
  T* tile = reinterpret_cast<T*>(raw);
  const int t = threadIdx.x;
  const int64_t r0 = (int64_t)blockIdx.y * kRegion, c0 = (int64_t)blockIdx.x * kRegion;
  const int rows = (int)min((int64_t)kRegion, R - r0), cols = (int)min((int64_t)kRegion, C - c0);  // 32 or 64

  // Stage the region (coalesced: consecutive threads read consecutive columns).
  for (int e = t; e < kRegion * kRegion; e += kThreads) {
    const int i = e / kRegion, j = e % kRegion;
    if (i < rows && j < cols) tile[i * LD + j] = w[(r0 + i) * C + c0 + j];
  }
  __syncthreads();

  // Phase 1: one thread per 4x4 tile, the exact pattern.
  {
    const int ti = t / (kRegion / 4), tj = t % (kRegion / 4);
    if (4 * ti < rows && 4 * tj < cols) tbits[ti][tj] = (uint16_t)s24::exact_tile_bits(tile + 4 * ti * LD + 4 * tj, LD);
  }
  __syncthreads();

  // Phase 2: one W word (row i, 16 columns 16*q..) per thread.
  {
    const int i = t / (kRegion / 16), q = t % (kRegion / 16);
    if (i < rows && 16 * q < cols) {
      uint32_t keep = 0;
      for (int g = 0; g < 4; ++g) keep |= ((uint32_t)(tbits[i / 4][4 * q + g] >> (4 * (i % 4))) & 0xFu) << (4 * g);
      T seg[16];
      for (int k = 0; k < 16; ++k) seg[k] = tile[i * LD + 16 * q + k];
      const int64_t r = r0 + i, c = c0 / 16 + q;
      meta[s24::cutlass_meta_offset(r, c, R)] = s24::pack_word(seg, keep, values + r * (C / 2) + 8 * c);
    }
  }
  // Phase 3: one W^T word (W column j, 16 rows 16*q..) per thread; consecutive threads take consecutive columns.
  {
    const int j = t % kRegion, q = t / kRegion;
    if (j < cols && 16 * q < rows) {
      uint32_t t4[4];
      for (int g = 0; g < 4; ++g) t4[g] = tbits[4 * q + g][j / 4];
      const uint32_t keep = s24::column_keep16(t4, j % 4);
      T seg[16];
      for (int k = 0; k < 16; ++k) seg[k] = tile[(16 * q + k) * LD + j];
      const int64_t jj = c0 + j, c = r0 / 16 + q;
      meta_t[s24::cutlass_meta_offset(jj, c, C)] = s24::pack_word(seg, keep, values_t + jj * (R / 2) + 8 * c);
    }
  }
}

template <typename T>
__global__ void _s24_mask_kernel(const T* __restrict__ w, uint8_t* __restrict__ keep, int64_t R, int64_t C,
                                 bool transposable) {
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (transposable) {  // one 4x4 tile per thread
    const int64_t TC = C / 4;
    if (i >= (R / 4) * TC) return;
    const int64_t r = (i / TC) * 4, c = (i % TC) * 4;
    const uint32_t bits = s24::exact_tile_bits(w + r * C + c, C);
    for (int a = 0; a < 4; ++a)
      for (int b = 0; b < 4; ++b) keep[(r + a) * C + c + b] = (bits >> (4 * a + b)) & 1u;
  } else {  // one group of 4 per thread
    if (i >= R * (C / 4)) return;
    const uint32_t bits = s24::top2_bits(w + 4 * i);
    for (int k = 0; k < 4; ++k) keep[4 * i + k] = (bits >> k) & 1u;
  }
}

template <typename T>
__global__ void _s24_decompress_kernel(const T* __restrict__ values, const uint16_t* __restrict__ meta,
                                       T* __restrict__ dense, int64_t R, int64_t C) {
  const int64_t W16 = C / 16;
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= R * W16) return;
  const int64_t r = i / W16, c = i % W16;
  T out[16];
  s24::unpack_word(values + r * (C / 2) + 8 * c, meta[s24::cutlass_meta_offset(r, c, R)], out);
  for (int k = 0; k < 16; ++k) dense[r * C + 16 * c + k] = out[k];
}

template <typename T>
__global__ void _s24_mvue_kernel(const T* __restrict__ g, T* __restrict__ out, int64_t groups, int m, uint32_t k0,
                                 uint32_t k1, uint32_t o0, uint32_t o1) {
  const int64_t q = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (q >= groups) return;
  const float u = s24::group_uniform((uint64_t)q, k0, k1, o0, o1);
  if (m == 2) s24::mvue_pair(g + 2 * q, out + 2 * q, u);
  else s24::mvue_group4(g + 4 * q, out + 4 * q, u);
}

}  // namespace

// ------------------------------------------------------------------------------------------------ launchers
std::vector<at::Tensor> sparse24_compress_cuda(const at::Tensor& w, bool transposable) {
  const char* fn = "sparse24_compress";
  check_float(w, fn, "w");
  const int64_t R = w.size(0), C = w.size(1);
  TORCH_CHECK(R % 32 == 0 && C % 32 == 0, fn,
              ": the CUTLASS metadata layout needs rows % 32 == 0 and cols % 32 == 0, got ", w.sizes());
  const c10::cuda::CUDAGuard guard(w.device());
  auto stream = at::cuda::getCurrentCUDAStream();
  auto values = at::empty({R, C / 2}, w.options());
  auto meta = at::empty({R, C / 16}, w.options().dtype(at::kShort));
  if (!transposable) {
    if (R * C == 0) return {values, meta};
    const unsigned blocks = blocks_for(R * (C / 16), fn);
    SPARSE_S24_DISPATCH(w.scalar_type(), [&] {
      _s24_compress_rows_kernel<T><<<blocks, kThreads, 0, stream>>>(
          w.data_ptr<T>(), values.data_ptr<T>(), reinterpret_cast<uint16_t*>(meta.data_ptr<int16_t>()), R, C);
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return {values, meta};
  }
  auto values_t = at::empty({C, R / 2}, w.options());
  auto meta_t = at::empty({C, R / 16}, w.options().dtype(at::kShort));
  if (R * C == 0) return {values, meta, values_t, meta_t};
  const int64_t gx = (C + kRegion - 1) / kRegion, gy = (R + kRegion - 1) / kRegion;
  TORCH_CHECK(gx <= std::numeric_limits<int32_t>::max() && gy <= 65535, fn, ": ", w.sizes(), " exceeds one launch");
  const dim3 grid((unsigned)gx, (unsigned)gy);
  SPARSE_S24_DISPATCH(w.scalar_type(), [&] {
    _s24_compress_transposable_kernel<T><<<grid, kThreads, 0, stream>>>(
        w.data_ptr<T>(), values.data_ptr<T>(), reinterpret_cast<uint16_t*>(meta.data_ptr<int16_t>()),
        values_t.data_ptr<T>(), reinterpret_cast<uint16_t*>(meta_t.data_ptr<int16_t>()), R, C);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {values, meta, values_t, meta_t};
}

at::Tensor sparse24_mask_cuda(const at::Tensor& w, bool transposable) {
  const char* fn = "sparse24_mask";
  check_float(w, fn, "w");
  const int64_t R = w.size(0), C = w.size(1);
  TORCH_CHECK(C % 4 == 0 && (!transposable || R % 4 == 0), fn, ": expected cols", transposable ? " and rows" : "",
              " divisible by 4, got ", w.sizes());
  const c10::cuda::CUDAGuard guard(w.device());
  auto keep = at::empty({R, C}, w.options().dtype(at::kBool));
  const int64_t work = transposable ? (R / 4) * (C / 4) : R * (C / 4);
  if (work == 0) return keep;
  const unsigned blocks = blocks_for(work, fn);
  SPARSE_S24_DISPATCH(w.scalar_type(), [&] {
    _s24_mask_kernel<T><<<blocks, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        w.data_ptr<T>(), reinterpret_cast<uint8_t*>(keep.data_ptr<bool>()), R, C, transposable);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return keep;
}

at::Tensor sparse24_decompress_cuda(const at::Tensor& values, const at::Tensor& meta) {
  const char* fn = "sparse24_decompress";
  check_float(values, fn, "values");
  TORCH_CHECK(meta.is_cuda() && meta.device() == values.device(), fn, ": meta: expected a tensor on ", values.device());
  TORCH_CHECK(meta.scalar_type() == at::kShort && meta.dim() == 2 && meta.is_contiguous(), fn,
              ": meta: expected a contiguous 2-D int16 tensor, got ", meta.scalar_type(), " ", meta.sizes());
  const int64_t R = values.size(0), C = 2 * values.size(1);
  TORCH_CHECK(R % 32 == 0 && C % 32 == 0 && meta.size(0) == R && meta.size(1) == C / 16, fn,
              ": expected values [R, C/2] and meta [R, C/16] with R % 32 == 0, C % 32 == 0, got values ",
              values.sizes(), " meta ", meta.sizes());
  const c10::cuda::CUDAGuard guard(values.device());
  auto dense = at::empty({R, C}, values.options());
  if (R * C == 0) return dense;
  const unsigned blocks = blocks_for(R * (C / 16), fn);
  SPARSE_S24_DISPATCH(values.scalar_type(), [&] {
    _s24_decompress_kernel<T><<<blocks, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        values.data_ptr<T>(), reinterpret_cast<const uint16_t*>(meta.data_ptr<int16_t>()), dense.data_ptr<T>(), R, C);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return dense;
}

at::Tensor sparse24_mvue_cuda(const at::Tensor& g, const at::Tensor& seed_offset, int64_t m) {
  const char* fn = "sparse24_mvue";
  check_float(g, fn, "g");
  const MvueSeed so = check_mvue_args(g, seed_offset, m, fn);
  const uint64_t seed = so.seed, off = so.offset;
  const c10::cuda::CUDAGuard guard(g.device());
  auto out = at::empty_like(g);
  const int64_t groups = g.numel() / m;
  if (groups == 0) return out;
  const unsigned blocks = blocks_for(groups, fn);
  SPARSE_S24_DISPATCH(g.scalar_type(), [&] {
    _s24_mvue_kernel<T><<<blocks, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        g.data_ptr<T>(), out.data_ptr<T>(), groups, (int)m, (uint32_t)seed, (uint32_t)(seed >> 32), (uint32_t)off,
        (uint32_t)(off >> 32));
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace sparse_ext
