// Block-sparse matmuls on the CPU without gathering activations: every kept B x B block is multiplied
// where it lies in the dense operand. Dense bf16 GEMM runs on AMX, so anything that first gathers
// activations (or runs many small GEMMs through torch) loses to it.
//
// Two paths:
// * bf16, B a multiple of 32, AMX present: hand-written AMX tile kernels (amx_acc_32x32 / amx_gemm_32x32)
//   that keep a 32 x 32 fp32 output tile in the tile registers across all kept blocks of an output block.
//   ATen's cpublas::brgemm was the first choice, but its wrapper runs one ukernel per call (batch 1):
//   with one kept block as the K of a call, C goes through memory every 32..64 K-steps and the per-call
//   overhead (~1 us, measured) dominated, and its packed-B leading dimension must be 16..64.
// * bf16, B a multiple of 32, AVX512-BF16 but no AMX (AMD Zen 4/5): the same tile drivers with vdpbf16ps
//   microkernels on the same VNNI panels (oneDNN's brgemm cannot pack bf16 there, see could_pack).
// * everything else it supports (fp32, B = 16, bf16/fp16 without AMX where oneDNN can pack them):
//   cpublas::brgemm per run of adjacent kept blocks, B operands packed once per call.
//
// Threads: at::parallel_for (torch's pool, honours torch.set_num_threads), one region per kernel call
// (on a shared machine every region's join can cost a scheduler slice); each chunk ends with
// brgemm_release() / tile release because AMX tile state is per thread.
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <immintrin.h>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/native/CPUBlas.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "sparse/bsr_cpu.h"

namespace sparse_ext {
namespace {

namespace blas = at::native::cpublas;

template <typename T>
constexpr bool kVnni = !std::is_same_v<T, float>;  // 16-bit operands: B must be VNNI-packed (K pairs)

// oneDNN's packed B accepts ld_b in {16, 32, 48, 64} only: B operands are stored as column panels of
// at most 64 columns (block 128 -> two panels).
inline int64_t panel_width(int64_t bs) { return std::min<int64_t>(bs, 64); }

// ------------------------------------------------------------------ fp32 -> output dtype
// A scalar bf16/fp16 rounding loop would cost as much as the sparse GEMM itself at 4096 x 3072 outputs;
// AVX-512 converts 16 at a time (runtime-checked, the file is built for the baseline ISA).
__attribute__((target("avx512f,avx512bf16,avx512vl"))) void cvt_bf16_avx512(const float* s, at::BFloat16* d,
                                                                            int64_t n, const float* bias) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    __m512 x = _mm512_loadu_ps(s + i);
    if (bias) x = _mm512_add_ps(x, _mm512_loadu_ps(bias + i));
    __m256bh v = _mm512_cvtneps_pbh(x);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(d + i), reinterpret_cast<__m256i&>(v));
  }
  for (; i < n; ++i) d[i] = at::BFloat16(s[i] + (bias ? bias[i] : 0.f));
}

__attribute__((target("avx512f"))) void cvt_f16_avx512(const float* s, at::Half* d, int64_t n, const float* bias) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    __m512 x = _mm512_loadu_ps(s + i);
    if (bias) x = _mm512_add_ps(x, _mm512_loadu_ps(bias + i));
    __m256i v = _mm512_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(d + i), v);
  }
  for (; i < n; ++i) d[i] = at::Half(s[i] + (bias ? bias[i] : 0.f));
}

const bool kHasBf16Cvt = __builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("avx512vl");
const bool kHasF16Cvt = __builtin_cpu_supports("avx512f");

// d[i] = s[i] (+ bias[i]) in d's dtype, bias optional (fp32).
inline void store_row(const float* s, float* d, int64_t n, const float* bias = nullptr) {
  for (int64_t i = 0; i < n; ++i) d[i] = s[i] + (bias ? bias[i] : 0.f);
}
inline void store_row(const float* s, at::BFloat16* d, int64_t n, const float* bias = nullptr) {
  if (kHasBf16Cvt) return cvt_bf16_avx512(s, d, n, bias);
  for (int64_t i = 0; i < n; ++i) d[i] = at::BFloat16(s[i] + (bias ? bias[i] : 0.f));
}
inline void store_row(const float* s, at::Half* d, int64_t n, const float* bias = nullptr) {
  if (kHasF16Cvt) return cvt_f16_avx512(s, d, n, bias);
  for (int64_t i = 0; i < n; ++i) d[i] = at::Half(s[i] + (bias ? bias[i] : 0.f));
}

// Output block j of an empty sparse row/column: zeros, or the bias.
template <typename T>
void store_empty(T* dst, int64_t ld, int64_t rows, int64_t n, const float* bias) {
  if (!bias) {
    for (int64_t r = 0; r < rows; ++r) std::memset(dst + r * ld, 0, n * sizeof(T));
    return;
  }
  const std::vector<float> zero(n, 0.f);
  for (int64_t r = 0; r < rows; ++r) store_row(zero.data(), dst + r * ld, n, bias);
}

// ------------------------------------------------------------------ operand preparation
// dst[c * ld_dst + r] = src[r * ld_src + c] for r < rows, c < cols (tiled for cache locality).
template <typename T>
void transpose_into(const T* src, int64_t ld_src, T* dst, int64_t ld_dst, int64_t rows, int64_t cols) {
  constexpr int64_t kT = 32;
  for (int64_t r0 = 0; r0 < rows; r0 += kT) {
    const int64_t r1 = std::min(rows, r0 + kT);
    for (int64_t c0 = 0; c0 < cols; c0 += kT) {
      const int64_t c1 = std::min(cols, c0 + kT);
      for (int64_t c = c0; c < c1; ++c)
        for (int64_t r = r0; r < r1; ++r) dst[c * ld_dst + r] = src[r * ld_src + c];
    }
  }
}

// B operand of brgemm from a row-major [K, N] source (ld_src): fp32 is used row-major as is (copied
// here), 16-bit types are VNNI-packed to [K/2, N, 2] (ld N). K must be even for 16-bit types.
template <typename T>
void pack_b(const T* src, int64_t ld_src, T* dst, int64_t k, int64_t n) {
  if constexpr (kVnni<T>) {
    blas::pack(k, n, ld_src, n, c10::CppTypeToScalarType<T>::value, c10::CppTypeToScalarType<T>::value, src, dst);
  } else {
    for (int64_t r = 0; r < k; ++r) std::memcpy(dst + r * n, src + r * ld_src, n * sizeof(T));
  }
}

// ------------------------------------------------------------------ DDS
template <typename T>
at::Tensor dds_impl(const at::Tensor& a, const at::Tensor& data, const at::Tensor& seg, const at::Tensor& idx,
                    const at::Tensor& dptr, bool trans_w, int64_t m_tile, const float* bias) {
  const int64_t t_rows = a.size(0), k_in = a.size(1);
  const int64_t nnz = data.size(0), bs = data.size(1);
  const int64_t n_out = seg.numel() - 1;
  const int64_t ld_out = n_out * bs;
  auto out = at::empty({t_rows, ld_out}, a.options());
  if (t_rows == 0 || ld_out == 0) return out;
  if (nnz == 0 && !bias) return out.zero_();

  const int32_t* sp = seg.data_ptr<int32_t>();
  const int32_t* ip = idx.data_ptr<int32_t>();
  const int32_t* dp = dptr.numel() ? dptr.data_ptr<int32_t>() : nullptr;
  const T* wp = data.data_ptr<T>();
  const T* ap = a.data_ptr<T>();
  T* op = out.data_ptr<T>();

  // Weight blocks as brgemm B operands op(W_d) [B(k), nb(n)], stored [panel][p][B][nb] in list order p:
  // consecutive p of one output block are one contiguous [run*B, nb] operand (VNNI pairs never
  // straddle blocks since B is even).
  const int64_t nb = panel_width(bs), n_panels = bs / nb;
  auto packed_t = at::empty({n_panels, nnz, bs, nb}, data.options());
  T* pk = packed_t.data_ptr<T>();
  at::parallel_for(0, nnz, 16, [&](int64_t p0, int64_t p1) {
    std::vector<T> tmp(trans_w ? bs * bs : 0);
    for (int64_t p = p0; p < p1; ++p) {
      const T* w = wp + (dp ? static_cast<int64_t>(dp[p]) : p) * bs * bs;
      if (trans_w) {
        transpose_into(w, bs, tmp.data(), bs, bs, bs);
        w = tmp.data();
      }
      for (int64_t h = 0; h < n_panels; ++h) pack_b(w + h * nb, bs, pk + (h * nnz + p) * bs * nb, bs, nb);
    }
  });

  m_tile = std::max<int64_t>(1, m_tile);
  const int64_t n_tiles = (t_rows + m_tile - 1) / m_tile;
  at::parallel_for(0, n_tiles, 1, [&](int64_t b0, int64_t b1) {
    std::vector<float> acc(m_tile * bs);
    for (int64_t tile = b0; tile < b1; ++tile) {
      const int64_t t0 = tile * m_tile, m = std::min(m_tile, t_rows - t0);
      for (int64_t j = 0; j < n_out; ++j) {
        T* dst = op + t0 * ld_out + j * bs;
        int64_t p = sp[j];
        const int64_t end = sp[j + 1];
        if (p == end) {
          store_empty(dst, ld_out, m, bs, bias ? bias + j * bs : nullptr);
          continue;
        }
        for (int64_t h = 0; h < n_panels; ++h) {
          bool add = false;
          for (int64_t pp = p; pp < end;) {
            int64_t q = pp + 1;  // runs of adjacent input blocks: one call with a longer K
            while (q < end && ip[q] == ip[q - 1] + 1) ++q;
            blas::brgemm(m, nb, (q - pp) * bs, k_in, nb, bs, add,
                         ap + t0 * k_in + static_cast<int64_t>(ip[pp]) * bs, pk + (h * nnz + pp) * bs * nb,
                         acc.data() + h * nb, kVnni<T>);
            add = true;
            pp = q;
          }
        }
        for (int64_t r = 0; r < m; ++r)
          store_row(acc.data() + r * bs, dst + r * ld_out, bs, bias ? bias + j * bs : nullptr);
      }
    }
    blas::brgemm_release(kVnni<T>);
  });
  return out;
}

// ------------------------------------------------------------------ SDD
// Row-major [rows, kp] copy of a [rows, k] view (kp >= k, zero tail), or the view itself if usable.
template <typename T>
at::Tensor rows_operand(const at::Tensor& v, int64_t kp) {
  const int64_t rows = v.size(0), k = v.size(1);
  if (kp == k && v.is_contiguous()) return v;
  auto buf = at::empty({rows, kp}, v.options());
  T* d = buf.data_ptr<T>();
  if (v.stride(0) == 1 && v.stride(1) >= rows) {  // a transposed row-major matrix: tiled transpose
    const T* s = v.data_ptr<T>();
    const int64_t ld_s = v.stride(1);
    at::parallel_for(0, rows, 64, [&](int64_t r0, int64_t r1) {
      transpose_into(s + r0, ld_s, d + r0 * kp, kp, k, r1 - r0);
      for (int64_t r = r0; r < r1; ++r)
        for (int64_t c = k; c < kp; ++c) d[r * kp + c] = T(0);
    });
  } else {
    buf.narrow(1, 0, k).copy_(v);
    if (kp > k) buf.narrow(1, k, kp - k).zero_();
  }
  return buf;
}

// brgemm B operand from a [k, n] view as column panels [n/nb][kp][nb] (nb | n), each VNNI-packed
// (16-bit) or row-major (fp32); rows k..kp-1 are zero.
template <typename T>
at::Tensor cols_operand(const at::Tensor& v, int64_t kp, int64_t nb) {
  const at::Tensor src = v.is_contiguous() ? v : v.contiguous();
  const int64_t k = src.size(0), n = src.size(1), n_panels = n / nb;
  auto buf = at::empty({n_panels, kp, nb}, v.options());
  const T* s = src.data_ptr<T>();
  T* d = buf.data_ptr<T>();
  const int64_t k_even = k & ~int64_t(1);
  constexpr int64_t kChunk = 256;  // even: VNNI pairs stay inside a chunk
  const int64_t n_chunks = (k_even + kChunk - 1) / kChunk;
  at::parallel_for(0, n_chunks * n_panels, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t h = c % n_panels, r0 = (c / n_panels) * kChunk, r1 = std::min(k_even, r0 + kChunk);
      pack_b(s + r0 * n + h * nb, n, d + (h * kp + r0) * nb, r1 - r0, nb);
    }
  });
  for (int64_t h = 0; h < n_panels && k_even < kp; ++h) {
    // Odd K (or padding): VNNI pair (row k-1, zero row); fp32 pads zero rows.
    T* tail = d + (h * kp + k_even) * nb;
    for (int64_t r = k_even; r < kp; ++r)
      for (int64_t i = 0; i < nb; ++i) {
        const T val = r < k ? s[r * n + h * nb + i] : T(0);
        if constexpr (kVnni<T>) {
          tail[2 * i + (r - k_even)] = val;
        } else {
          tail[(r - k_even) * nb + i] = val;
        }
      }
  }
  return buf;
}

template <typename T>
at::Tensor sdd_impl(const at::Tensor& l, const at::Tensor& r, const at::Tensor& crow, const at::Tensor& col,
                    int64_t bs, int64_t k_tile) {
  const int64_t k = l.size(1);
  const int64_t nnz = col.numel(), n_rows = crow.numel() - 1;
  auto out = at::empty({nnz, bs, bs}, l.options());
  if (nnz == 0) return out;
  if (k == 0) return out.zero_();

  // brgemm wants A row-major with K contiguous; activations are token-major, so one operand must be
  // transposed. Compute out^T = R^T L^T instead of L R when that transposes the smaller matrix.
  auto cost = [](const at::Tensor& v) { return v.is_contiguous() ? int64_t(0) : v.numel(); };
  const bool swap = cost(r.t()) + cost(l.t()) < cost(l) + cost(r);
  const int64_t kp = kVnni<T> ? (k + 1) & ~int64_t(1) : k;
  const at::Tensor a_op = rows_operand<T>(swap ? r.t() : l, kp);   // [M or N, kp]
  const int64_t nb = panel_width(bs), n_panels = bs / nb;
  const at::Tensor b_op = cols_operand<T>(swap ? l.t() : r, kp, nb);   // [(N or M)/nb, kp, nb]
  const T* ap = a_op.data_ptr<T>();
  const T* bp = b_op.data_ptr<T>();
  const int32_t* cp = crow.data_ptr<int32_t>();
  const int32_t* colp = col.data_ptr<int32_t>();
  auto acc_t = at::empty({nnz, bs, bs}, l.options().dtype(at::kFloat));
  float* acc = acc_t.data_ptr<float>();

  // Parts of whole block rows with about equal block counts: each thread owns its accumulators.
  const int64_t parts = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), n_rows));
  std::vector<int64_t> bounds(parts + 1, n_rows);
  bounds[0] = 0;
  for (int64_t i = 1, rr = 0; i < parts; ++i) {
    while (rr < n_rows && cp[rr] * parts < i * nnz) ++rr;
    bounds[i] = rr;
  }
  k_tile = std::max<int64_t>(2, k_tile & ~int64_t(1));
  at::parallel_for(0, parts, 1, [&](int64_t q0, int64_t q1) {
    for (int64_t q = q0; q < q1; ++q) {
      for (int64_t k0 = 0; k0 < kp; k0 += k_tile) {
        const int64_t kl = std::min(k_tile, kp - k0);
        for (int64_t rb = bounds[q]; rb < bounds[q + 1]; ++rb) {
          for (int64_t p = cp[rb]; p < cp[rb + 1]; ++p) {
            const int64_t i = swap ? colp[p] : rb, jj = swap ? rb : colp[p];  // A row block, B col block
            for (int64_t h = 0; h < n_panels; ++h)
              blas::brgemm(bs, nb, kl, kp, nb, bs, k0 > 0, ap + i * bs * kp + k0,
                           bp + ((jj * n_panels + h) * kp + k0) * nb, acc + p * bs * bs + h * nb, kVnni<T>);
          }
        }
      }
    }
    blas::brgemm_release(kVnni<T>);
  });

  T* op = out.data_ptr<T>();
  at::parallel_for(0, nnz, 16, [&](int64_t p0, int64_t p1) {
    std::vector<float> tmp(swap ? bs * bs : 0);
    for (int64_t p = p0; p < p1; ++p) {
      const float* s = acc + p * bs * bs;
      if (swap) {
        transpose_into(s, bs, tmp.data(), bs, bs, bs);
        s = tmp.data();
      }
      store_row(s, op + p * bs * bs, bs * bs);
    }
  });
  return out;
}


// ------------------------------------------------------------------ AMX bf16 kernels
// torch's brgemm wrapper runs one ukernel per call (batch size 1): with a kept block as the K of a call,
// C goes through memory every B = 32..64 K-steps and the per-call overhead (~1 us) dominates. These
// kernels keep a 32 x 32 fp32 output tile in the AMX registers across all kept blocks of an output
// block (any K), loading A tiles straight from the dense activations. All 8 tiles are 16 rows x 64 B:
// tmm0-3 C (2 x 2 tiles of 16 x 16 fp32), tmm4-5 A (16 rows x 32 bf16), tmm6-7 B (16 K-pairs x 16 cols).
struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

bool amx_usable() {
  static const bool ok = [] {
    unsigned a = 0, b = 0, c = 0, d = 0;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
    const bool tile = (d >> 24) & 1, bf16 = (d >> 22) & 1;
    if (!tile || !bf16) return false;
    // Linux hands out the AMX register state only on request (once per process, for all threads).
    constexpr long kGetPerm = 0x1022, kReqPerm = 0x1023, kXtileData = 18;
    unsigned long perm = 0;
    if (syscall(SYS_arch_prctl, kGetPerm, &perm) != 0) return false;
    if (!(perm & (1ul << kXtileData)) && syscall(SYS_arch_prctl, kReqPerm, kXtileData) != 0) return false;
    return syscall(SYS_arch_prctl, kGetPerm, &perm) == 0 && (perm & (1ul << kXtileData));
  }();
  return ok;
}

TileConfig make_tile_config() {
  TileConfig cfg;
  for (int i = 0; i < 8; ++i) {
    cfg.colsb[i] = 64;
    cfg.rows[i] = 16;
  }
  return cfg;
}
// Not on the stack: GCC 12 drops stores to a local config only read by ldtilecfg (-> #GP).
const TileConfig kTileConfig = make_tile_config();

__attribute__((target("amx-tile,amx-bf16"))) void amx_begin() { _tile_loadconfig(&kTileConfig); }
// Through ATen's release: it also forgets the brgemm config ATen believes is loaded in this thread
// (ours replaced it), so a later cpublas::brgemm call in this thread loads its own again.
void amx_end() { blas::brgemm_release(true); }

using bf16 = at::BFloat16;

// C[32, 32] (fp32, ld 32) = sum_{p in [p0, p1)} A_p[32, bs] @ Bp[bs, 32]; A_p = a + ip[p] * bs (row stride
// lda elements), Bp = VNNI panel [bs/2][32][2] at w + p * w_stride. init: load C instead of zeroing.
__attribute__((target("amx-tile,amx-bf16"))) void amx_acc_32x32(const bf16* a, int64_t lda, const int32_t* ip,
                                                               int64_t p0, int64_t p1, const bf16* w,
                                                               int64_t w_stride, int64_t bs, float* c) {
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  const int64_t sa = lda * 2;
  for (int64_t p = p0; p < p1; ++p) {
    const bf16* ab = a + static_cast<int64_t>(ip[p]) * bs;
    const bf16* wb = w + p * w_stride;
    for (int64_t k = 0; k < bs; k += 32) {
      _tile_loadd(4, ab + k, sa);
      _tile_loadd(5, ab + 16 * lda + k, sa);
      _tile_loadd(6, wb + k * 32, 128);
      _tile_loadd(7, wb + k * 32 + 32, 128);
      _tile_dpbf16ps(0, 4, 6);
      _tile_dpbf16ps(1, 4, 7);
      _tile_dpbf16ps(2, 5, 6);
      _tile_dpbf16ps(3, 5, 7);
    }
  }
  _tile_stored(0, c, 128);
  _tile_stored(1, c + 16, 128);
  _tile_stored(2, c + 16 * 32, 128);
  _tile_stored(3, c + 16 * 32 + 16, 128);
}

// C[32, 32] (+)= A[32, k] @ B[k, 32]: A row-major (row stride lda), B VNNI [k/2][ldb][2] (column offset
// already applied); k a multiple of 32; C fp32 row stride ldc.
__attribute__((target("amx-tile,amx-bf16"))) void amx_gemm_32x32(const bf16* a, int64_t lda, const bf16* b,
                                                                int64_t ldb, int64_t k, float* c, int64_t ldc,
                                                                bool add) {
  const int64_t sc = ldc * 4;
  if (add) {
    _tile_loadd(0, c, sc);
    _tile_loadd(1, c + 16, sc);
    _tile_loadd(2, c + 16 * ldc, sc);
    _tile_loadd(3, c + 16 * ldc + 16, sc);
  } else {
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
  }
  const int64_t sa = lda * 2, sb = ldb * 4;
  for (int64_t kk = 0; kk < k; kk += 32) {
    _tile_loadd(4, a + kk, sa);
    _tile_loadd(5, a + 16 * lda + kk, sa);
    _tile_loadd(6, b + kk * ldb, sb);
    _tile_loadd(7, b + kk * ldb + 32, sb);
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
  }
  _tile_stored(0, c, sc);
  _tile_stored(1, c + 16, sc);
  _tile_stored(2, c + 16 * ldc, sc);
  _tile_stored(3, c + 16 * ldc + 16, sc);
}

// ------------------------------------------------------------------ AVX512-BF16 kernels
// The same two microkernels for CPUs with AVX512-BF16 but no AMX (AMD Zen 4/5, Intel Cooper Lake), on
// the same VNNI B panels: vdpbf16ps takes a (k, k+1) pair of A broadcast as one 32-bit lane against a
// VNNI row of B (16 columns x 2 K), so a 32-column panel row is two zmm loads. The 32 x 32 output tile
// is done as four 8-row strips: 16 fp32 accumulators + 2 B + 1 broadcast register per strip (of 32);
// a B panel (bs * 32 bf16, 2..8 KB) stays in L1 across the four strips.
__attribute__((target("avx512f,avx512bf16"), always_inline)) inline void avx_zero(__m512 (&acc)[8][2]) {
  for (int i = 0; i < 8; ++i) acc[i][0] = acc[i][1] = _mm512_setzero_ps();
}

// acc[i] += A[i, k..k+kl) @ B[k..k+kl, 0..32) for i < 8: A row-major (row stride lda elements), B VNNI
// rows of 64 bf16 at stride ldb2 elements (one row per K pair); kl even.
__attribute__((target("avx512f,avx512bf16"), always_inline)) inline void avx_strip(__m512 (&acc)[8][2],
                                                                                    const bf16* a, int64_t lda,
                                                                                    const bf16* b, int64_t ldb2,
                                                                                    int64_t kl) {
  for (int64_t k = 0; k < kl; k += 2) {
    const __m512bh b0 = (__m512bh)_mm512_loadu_si512(b + (k / 2) * ldb2);
    const __m512bh b1 = (__m512bh)_mm512_loadu_si512(b + (k / 2) * ldb2 + 32);
#pragma GCC unroll 8
    for (int i = 0; i < 8; ++i) {
      int32_t pair;
      std::memcpy(&pair, a + i * lda + k, sizeof(pair));
      const __m512bh av = (__m512bh)_mm512_set1_epi32(pair);
      acc[i][0] = _mm512_dpbf16_ps(acc[i][0], av, b0);
      acc[i][1] = _mm512_dpbf16_ps(acc[i][1], av, b1);
    }
  }
}

// Same contract as amx_acc_32x32.
__attribute__((target("avx512f,avx512bf16"))) void avx_acc_32x32(const bf16* a, int64_t lda, const int32_t* ip,
                                                                int64_t p0, int64_t p1, const bf16* w,
                                                                int64_t w_stride, int64_t bs, float* c) {
  for (int64_t r0 = 0; r0 < 32; r0 += 8) {
    __m512 acc[8][2];
    avx_zero(acc);
    for (int64_t p = p0; p < p1; ++p)
      avx_strip(acc, a + r0 * lda + static_cast<int64_t>(ip[p]) * bs, lda, w + p * w_stride, 64, bs);
    for (int i = 0; i < 8; ++i) {
      _mm512_storeu_ps(c + (r0 + i) * 32, acc[i][0]);
      _mm512_storeu_ps(c + (r0 + i) * 32 + 16, acc[i][1]);
    }
  }
}

// Same contract as amx_gemm_32x32.
__attribute__((target("avx512f,avx512bf16"))) void avx_gemm_32x32(const bf16* a, int64_t lda, const bf16* b,
                                                                 int64_t ldb, int64_t k, float* c, int64_t ldc,
                                                                 bool add) {
  for (int64_t r0 = 0; r0 < 32; r0 += 8) {
    __m512 acc[8][2];
    if (add) {
      for (int i = 0; i < 8; ++i) {
        acc[i][0] = _mm512_loadu_ps(c + (r0 + i) * ldc);
        acc[i][1] = _mm512_loadu_ps(c + (r0 + i) * ldc + 16);
      }
    } else {
      avx_zero(acc);
    }
    avx_strip(acc, a + r0 * lda, lda, b, 2 * ldb, k);
    for (int i = 0; i < 8; ++i) {
      _mm512_storeu_ps(c + (r0 + i) * ldc, acc[i][0]);
      _mm512_storeu_ps(c + (r0 + i) * ldc + 16, acc[i][1]);
    }
  }
}

bool avx512bf16_usable() {
  static const bool ok = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                         __builtin_cpu_supports("avx512bf16");
  return ok;
}

void no_tile_state() {}

// The two tile-kernel families behind dds_tiles / sdd_tiles: per-thread setup/teardown and the two
// microkernels (direct calls: the pointers are compile-time constants).
template <void (*Begin)(), void (*End)(), decltype(&amx_acc_32x32) Acc, decltype(&amx_gemm_32x32) Gemm>
struct TileKernels {
  static constexpr auto begin = Begin;
  static constexpr auto end = End;
  static constexpr auto acc = Acc;
  static constexpr auto gemm = Gemm;
};
using AmxKernels = TileKernels<amx_begin, amx_end, amx_acc_32x32, amx_gemm_32x32>;
using Avx512Bf16Kernels = TileKernels<no_tile_state, no_tile_state, avx_acc_32x32, avx_gemm_32x32>;

// VNNI copy of rows [r0, r1) (r0 even) of a row-major [k, n] bf16 matrix into dst [kp/2][n][2];
// rows >= k read as zero.
__attribute__((target("avx512f,avx512bw"))) void vnni_rows(const bf16* s, int64_t ld_s, int64_t k, int64_t n,
                                                           bf16* d, int64_t r0, int64_t r1) {
  alignas(64) static const uint16_t lo_idx[32] = {0, 32, 1, 33, 2, 34, 3, 35, 4, 36, 5, 37, 6, 38, 7, 39,
                                                  8, 40, 9, 41, 10, 42, 11, 43, 12, 44, 13, 45, 14, 46, 15, 47};
  alignas(64) static const uint16_t hi_idx[32] = {16, 48, 17, 49, 18, 50, 19, 51, 20, 52, 21, 53, 22, 54, 23, 55,
                                                  24, 56, 25, 57, 26, 58, 27, 59, 28, 60, 29, 61, 30, 62, 31, 63};
  const __m512i lo = _mm512_load_si512(lo_idx), hi = _mm512_load_si512(hi_idx);
  for (int64_t r = r0; r < r1; r += 2) {
    bf16* out = d + r * n;
    if (r + 1 >= k) {  // the last pairs: plain loop with zeros
      for (int64_t i = 0; i < n; ++i) {
        out[2 * i] = r < k ? s[r * ld_s + i] : bf16(0.f);
        out[2 * i + 1] = bf16(0.f);
      }
      continue;
    }
    const bf16* x0 = s + r * ld_s;
    const bf16* x1 = x0 + ld_s;
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
      const __m512i a = _mm512_loadu_si512(x0 + i), b = _mm512_loadu_si512(x1 + i);
      _mm512_storeu_si512(out + 2 * i, _mm512_permutex2var_epi16(a, lo, b));
      _mm512_storeu_si512(out + 2 * i + 32, _mm512_permutex2var_epi16(a, hi, b));
    }
    for (; i < n; ++i) {
      out[2 * i] = x0[i];
      out[2 * i + 1] = x1[i];
    }
  }
}

// sum[i] += s[r * ld + i] over rows r < rows, i < n (bf16 -> fp32: the high half of the word).
__attribute__((target("avx512f"))) void add_colsums(const bf16* s, int64_t ld, int64_t rows, int64_t n, float* sum) {
  for (int64_t r = 0; r < rows; ++r) {
    const bf16* row = s + r * ld;
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
      const __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + i)));
      const __m512 f = _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
      _mm512_storeu_ps(sum + i, _mm512_add_ps(_mm512_loadu_ps(sum + i), f));
    }
    for (; i < n; ++i) sum[i] += static_cast<float>(row[i]);
  }
}

template <typename K>
at::Tensor dds_tiles(const at::Tensor& a, const at::Tensor& data, const at::Tensor& seg, const at::Tensor& idx,
                   const at::Tensor& dptr, bool trans_w, int64_t m_tile, const float* bias) {
  const int64_t t_rows = a.size(0), k_in = a.size(1);
  const int64_t nnz = data.size(0), bs = data.size(1), n_panels = bs / 32;
  const int64_t n_out = seg.numel() - 1, ld_out = n_out * bs;
  auto out = at::empty({t_rows, ld_out}, a.options());
  if (t_rows == 0 || ld_out == 0) return out;
  if (nnz == 0 && !bias) return out.zero_();
  const int32_t* sp = seg.data_ptr<int32_t>();
  const int32_t* ip = idx.data_ptr<int32_t>();
  const int32_t* dp = dptr.numel() ? dptr.data_ptr<int32_t>() : nullptr;
  const bf16* wp = data.data_ptr<bf16>();
  const bf16* ap = a.data_ptr<bf16>();
  bf16* op = out.data_ptr<bf16>();

  // op(W_d) as VNNI panels [panel h][p][bs/2][32][2], list order p: element (k, n) of block p. Packed
  // on the calling thread (vectorised, ~nnz*B*B/2 moves): under a loaded machine every extra parallel
  // region costs a scheduler slice at its join, far more than this.
  auto packed_t = at::empty({n_panels, nnz, bs * 32}, data.options());
  bf16* pk = packed_t.data_ptr<bf16>();
  for (int64_t p = 0; p < nnz; ++p) {
    const bf16* w = wp + (dp ? static_cast<int64_t>(dp[p]) : p) * bs * bs;
    for (int64_t h = 0; h < n_panels; ++h) {
      bf16* dst = pk + (h * nnz + p) * bs * 32;
      if (!trans_w) {  // (k, n) = W[k][n]: rows k, k+1 interleaved
        vnni_rows(w + h * 32, bs, bs, 32, dst, 0, bs);
        continue;
      }
      // (k, n) = W[n][k]: the pair (k, k+1) is contiguous in W's row n, so VNNI is a 32-bit transpose.
      const auto* w32 = reinterpret_cast<const uint32_t*>(w) + h * 32 * (bs / 2);
      auto* d32 = reinterpret_cast<uint32_t*>(dst);
      for (int64_t n = 0; n < 32; ++n)
        for (int64_t q = 0; q < bs / 2; ++q) d32[q * 32 + n] = w32[n * (bs / 2) + q];
    }
  }

  // Super-tiles of m_tile tokens (x slice stays in L2, each weight row in L1 across its 32-row tiles).
  // Tiles are claimed dynamically: a thread preempted by another process delays only its current tile.
  m_tile = std::max<int64_t>(32, m_tile / 32 * 32);
  const int64_t n_tiles = (t_rows + m_tile - 1) / m_tile;
  const int64_t n_workers = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), n_tiles));
  std::atomic<int64_t> next_tile{0};
  at::parallel_for(0, n_workers, 1, [&](int64_t, int64_t) {
    K::begin();
    alignas(64) float c[32 * 32];
    std::vector<bf16> pad;  // a last, partial 32-row tile, zero-padded
    for (int64_t tile; (tile = next_tile.fetch_add(1)) < n_tiles;) {
      const int64_t t0 = tile * m_tile, t1 = std::min(t_rows, t0 + m_tile);
      for (int64_t j = 0; j < n_out; ++j) {
        const int64_t p0 = sp[j], p1 = sp[j + 1];
        for (int64_t r0 = t0; r0 < t1; r0 += 32) {
          const int64_t m = std::min<int64_t>(32, t1 - r0);
          bf16* dst = op + r0 * ld_out + j * bs;
          if (p0 == p1) {
            store_empty(dst, ld_out, m, bs, bias ? bias + j * bs : nullptr);
            continue;
          }
          const bf16* asrc = ap + r0 * k_in;
          if (m < 32) {
            if (pad.empty()) {
              pad.assign(32 * k_in, bf16(0.f));
              std::memcpy(pad.data(), asrc, m * k_in * sizeof(bf16));
            }
            asrc = pad.data();
          }
          for (int64_t h = 0; h < n_panels; ++h) {
            K::acc(asrc, k_in, ip, p0, p1, pk + h * nnz * bs * 32, bs * 32, bs, c);
            const float* bh = bias ? bias + j * bs + h * 32 : nullptr;
            for (int64_t r = 0; r < m; ++r) store_row(c + r * 32, dst + r * ld_out + h * 32, 32, bh);
          }
        }
      }
    }
    K::end();
  });
  return out;
}

// Kept blocks of Ls^T @ Rs: Ls [K, M], Rs [K, N] token-major (row-major, contiguous); block p = (r, c) is
// Ls[:, rB:(r+1)B]^T @ Rs[:, cB:(c+1)B], fp32 accumulation over K. Each thread owns whole block rows
// (or columns) of the larger operand and, per K-chunk, packs into private cache-resident buffers: its
// own columns of the larger operand as VNNI B, and the smaller operand transposed as A. No barriers,
// no full-size temporaries.
template <typename K>
at::Tensor sdd_tiles(const at::Tensor& ls, const at::Tensor& rs, const at::Tensor& crow, const at::Tensor& col,
                   const at::Tensor& ccol, const at::Tensor& row_t, const at::Tensor& perm_t, int64_t bs,
                   int64_t k_tile, float* colsum) {
  const int64_t k = ls.size(0);
  const int64_t nnz = col.numel();
  auto out = at::empty({nnz, bs, bs}, ls.options());
  if (nnz == 0 || k == 0) {
    if (colsum && k > 0) add_colsums(ls.data_ptr<bf16>(), ls.size(1), k, ls.size(1), colsum);
    return nnz == 0 ? out : out.zero_();
  }
  const bool own_rows = ls.size(1) >= rs.size(1);
  const at::Tensor& own = own_rows ? ls : rs;   // B role, split between threads
  const at::Tensor& sh = own_rows ? rs : ls;    // A role, every thread transposes all of it per chunk
  const int64_t ld_own = own.size(1), ld_sh = sh.size(1);
  const int32_t* seg = (own_rows ? crow : ccol).data_ptr<int32_t>();
  const int32_t* other = (own_rows ? col : row_t).data_ptr<int32_t>();
  const int32_t* dptr = own_rows ? nullptr : perm_t.data_ptr<int32_t>();
  const int64_t n_seg = (own_rows ? crow : ccol).numel() - 1;
  const bf16* op_own = own.data_ptr<bf16>();
  const bf16* op_sh = sh.data_ptr<bf16>();
  auto acc_t = at::empty({nnz, bs, bs}, ls.options().dtype(at::kFloat));
  float* acc = acc_t.data_ptr<float>();
  bf16* op = out.data_ptr<bf16>();

  const int64_t parts = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), n_seg));
  std::vector<int64_t> bounds(parts + 1, n_seg);
  bounds[0] = 0;
  for (int64_t i = 1, rr = 0; i < parts; ++i) {
    while (rr < n_seg && seg[rr] * parts < i * nnz) ++rr;
    bounds[i] = rr;
  }
  // Column sums of Ls (the bias gradient when Ls is dY): the owner of each column adds them while its
  // chunk is in cache; when Ls is the shared operand, one serial pass before the parallel region.
  if (colsum && !own_rows) add_colsums(op_sh, ld_sh, k, ld_sh, colsum);
  const int64_t kc = std::max<int64_t>(32, k_tile / 32 * 32);
  at::parallel_for(0, parts, 1, [&](int64_t q0, int64_t q1) {
    K::begin();
    for (int64_t q = q0; q < q1; ++q) {
      const int64_t s0 = bounds[q], s1 = bounds[q + 1], width = (s1 - s0) * bs;
      if (s0 == s1 || seg[s0] == seg[s1]) {
        if (colsum && own_rows) add_colsums(op_own + s0 * bs, ld_own, k, width, colsum + s0 * bs);
        continue;
      }
      std::vector<bf16> bbuf(kc * width), abuf(ld_sh * kc);
      for (int64_t k0 = 0; k0 < k; k0 += kc) {
        const int64_t kl = std::min(kc, k - k0), klp = (kl + 31) / 32 * 32;
        vnni_rows(op_own + k0 * ld_own + s0 * bs, ld_own, kl, width, bbuf.data(), 0, klp);
        if (colsum && own_rows) add_colsums(op_own + k0 * ld_own + s0 * bs, ld_own, kl, width, colsum + s0 * bs);
        transpose_into(op_sh + k0 * ld_sh, ld_sh, abuf.data(), kc, kl, ld_sh);
        if (klp > kl)  // K tail: zero columns so the last 32-step adds nothing
          for (int64_t c = 0; c < ld_sh; ++c)
            std::fill(abuf.data() + c * kc + kl, abuf.data() + c * kc + klp, bf16(0.f));
        for (int64_t sgi = s0; sgi < s1; ++sgi) {
          for (int64_t p = seg[sgi]; p < seg[sgi + 1]; ++p) {
            const int64_t o = other[p], d = dptr ? dptr[p] : p;
            for (int64_t u = 0; u < bs; u += 32)
              for (int64_t v = 0; v < bs; v += 32)
                K::gemm(abuf.data() + (o * bs + u) * kc, kc, bbuf.data() + ((sgi - s0) * bs + v) * 2, width,
                               klp, acc + d * bs * bs + u * bs + v, bs, k0 > 0);
          }
        }
      }
      // This thread's blocks are final: to the output dtype (acc holds block^T when the rows were owned,
      // C' = Rs_c^T Ls_r).
      std::vector<float> tmp(own_rows ? bs * bs : 0);
      for (int64_t sgi = s0; sgi < s1; ++sgi) {
        for (int64_t p = seg[sgi]; p < seg[sgi + 1]; ++p) {
          const int64_t d = dptr ? dptr[p] : p;
          const float* src = acc + d * bs * bs;
          if (own_rows) {
            transpose_into(src, bs, tmp.data(), bs, bs, bs);
            src = tmp.data();
          }
          store_row(src, op + d * bs * bs, bs * bs);
        }
      }
    }
    K::end();
  });
  return out;
}

enum class TileIsa { kNone, kAmx, kAvx512Bf16 };

// SPARSE_BSR_ISA=amx|avx512bf16|brgemm narrows the choice (tests run every kernel family the CPU has);
// unset: AMX, else AVX512-BF16, else brgemm.
TileIsa tile_isa(at::ScalarType dtype, int64_t bs) {
  if (dtype != at::kBFloat16 || bs % 32 != 0) return TileIsa::kNone;
  const char* env = std::getenv("SPARSE_BSR_ISA");
  const std::string want = env ? env : "";
  if ((want.empty() || want == "amx") && amx_usable()) return TileIsa::kAmx;
  if ((want.empty() || want == "avx512bf16") && avx512bf16_usable()) return TileIsa::kAvx512Bf16;
  return TileIsa::kNone;
}

void check_index(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kInt && t.dim() == 1 && t.is_contiguous(), name,
              ": expected a contiguous 1-D int32 CPU tensor, got ", t.scalar_type(), " ", t.sizes(), " on ",
              t.device());
}

}  // namespace

bool bsr_brgemm_supported(at::ScalarType dtype, int64_t block) {
  if (dtype == at::kFloat) return true;
  if (dtype != at::kBFloat16 && dtype != at::kHalf) return false;
  if (block > 0 && tile_isa(dtype, block) != TileIsa::kNone) return true;
  return blas::could_pack(dtype);
}

std::vector<std::string> bsr_cpu_kernels() {
  std::vector<std::string> out;
  if (amx_usable()) out.push_back("amx");
  if (avx512bf16_usable()) out.push_back("avx512bf16");
  out.push_back("brgemm");
  return out;
}

at::Tensor bsr_dds_cpu(const at::Tensor& a, const at::Tensor& data, const at::Tensor& seg, const at::Tensor& idx,
                       const at::Tensor& dptr, bool trans_w, int64_t m_tile, const std::optional<at::Tensor>& bias) {
  TORCH_CHECK(a.device().is_cpu() && a.dim() == 2, "bsr_dds: a: expected a 2-D CPU tensor, got ", a.sizes());
  TORCH_CHECK(data.dim() == 3 && data.size(1) == data.size(2) && data.scalar_type() == a.scalar_type() &&
                  data.device().is_cpu(),
              "bsr_dds: data: expected [nnz, B, B] of a's dtype ", a.scalar_type(), ", got ", data.scalar_type(),
              " ", data.sizes());
  TORCH_CHECK(bsr_brgemm_supported(a.scalar_type(), data.size(1)), "bsr_dds: dtype ", a.scalar_type(),
              " with block ", data.size(1), " has no native kernel on this CPU");
  check_index(seg, "bsr_dds: seg");
  check_index(idx, "bsr_dds: idx");
  TORCH_CHECK(idx.numel() == data.size(0), "bsr_dds: idx: expected nnz=", data.size(0), " entries, got ",
              idx.numel());
  TORCH_CHECK(dptr.numel() == 0 || dptr.numel() == data.size(0), "bsr_dds: dptr: expected 0 or nnz entries");
  if (dptr.numel()) check_index(dptr, "bsr_dds: dptr");
  const int64_t bs = data.size(1);
  TORCH_CHECK(seg.numel() >= 1 && a.size(1) % bs == 0, "bsr_dds: a: expected columns a multiple of B=", bs);
  const at::Tensor ac = a.contiguous(), dc = data.contiguous();
  at::Tensor bias_f;  // fp32 copy: added before the one rounding to the output dtype
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->device().is_cpu() && bias->dim() == 1 && bias->numel() == (seg.numel() - 1) * bs,
                "bsr_dds: bias: expected a 1-D CPU tensor of ", (seg.numel() - 1) * bs, " entries, got ",
                bias->sizes());
    bias_f = bias->to(at::kFloat).contiguous();
  }
  const float* bp = bias_f.defined() ? bias_f.data_ptr<float>() : nullptr;
  switch (tile_isa(a.scalar_type(), bs)) {
    case TileIsa::kAmx: return dds_tiles<AmxKernels>(ac, dc, seg, idx, dptr, trans_w, m_tile, bp);
    case TileIsa::kAvx512Bf16: return dds_tiles<Avx512Bf16Kernels>(ac, dc, seg, idx, dptr, trans_w, m_tile, bp);
    case TileIsa::kNone: break;
  }
  switch (a.scalar_type()) {
    case at::kFloat: return dds_impl<float>(ac, dc, seg, idx, dptr, trans_w, m_tile, bp);
    case at::kBFloat16: return dds_impl<at::BFloat16>(ac, dc, seg, idx, dptr, trans_w, m_tile, bp);
    case at::kHalf: return dds_impl<at::Half>(ac, dc, seg, idx, dptr, trans_w, m_tile, bp);
    default: TORCH_CHECK(false, "bsr_dds: unsupported dtype ", a.scalar_type());
  }
}

at::Tensor bsr_sdd_cpu(const at::Tensor& a, const at::Tensor& b, const at::Tensor& crow, const at::Tensor& col,
                       const at::Tensor& ccol, const at::Tensor& row_t, const at::Tensor& perm_t, int64_t block,
                       bool trans_a, bool trans_b, int64_t k_tile, const std::optional<at::Tensor>& colsum) {
  TORCH_CHECK(a.device().is_cpu() && b.device().is_cpu() && a.dim() == 2 && b.dim() == 2 &&
                  a.scalar_type() == b.scalar_type(),
              "bsr_sdd: expected 2-D CPU tensors of one dtype, got ", a.sizes(), " ", a.scalar_type(), " and ",
              b.sizes(), " ", b.scalar_type());
  TORCH_CHECK(bsr_brgemm_supported(a.scalar_type(), block), "bsr_sdd: dtype ", a.scalar_type(), " with block ",
              block, " has no native kernel on this CPU");
  check_index(crow, "bsr_sdd: crow");
  check_index(col, "bsr_sdd: col");
  const at::Tensor l = trans_a ? a.t() : a, r = trans_b ? b.t() : b;
  TORCH_CHECK(l.size(1) == r.size(0) && l.size(0) == (crow.numel() - 1) * block && r.size(1) % block == 0,
              "bsr_sdd: shapes ", l.sizes(), " @ ", r.sizes(), " do not match the layout (block ", block, ")");
  float* cs = nullptr;
  if (colsum.has_value() && colsum->defined()) {
    TORCH_CHECK(colsum->device().is_cpu() && colsum->scalar_type() == at::kFloat && colsum->is_contiguous() &&
                    colsum->dim() == 1 && colsum->numel() == l.size(0),
                "bsr_sdd: colsum: expected a zeroed contiguous float32 CPU tensor [", l.size(0), "], got ",
                colsum->scalar_type(), " ", colsum->sizes());
    cs = colsum->data_ptr<float>();
  }
  const TileIsa isa = tile_isa(a.scalar_type(), block);
  if (isa != TileIsa::kNone) {
    check_index(ccol, "bsr_sdd: ccol");
    check_index(row_t, "bsr_sdd: row_t");
    check_index(perm_t, "bsr_sdd: perm_t");
    TORCH_CHECK(ccol.numel() == r.size(1) / block + 1 && row_t.numel() == col.numel() &&
                    perm_t.numel() == col.numel(), "bsr_sdd: transpose metadata does not match the layout");
    // Token-major operands (a linear layer's x and dY already are): views are copied only if not.
    if (isa == TileIsa::kAmx)
      return sdd_tiles<AmxKernels>(l.t().contiguous(), r.contiguous(), crow, col, ccol, row_t, perm_t, block, k_tile,
                                   cs);
    return sdd_tiles<Avx512Bf16Kernels>(l.t().contiguous(), r.contiguous(), crow, col, ccol, row_t, perm_t, block,
                                        k_tile, cs);
  }
  if (cs) colsum->copy_(l.sum(1, false, at::kFloat));
  switch (a.scalar_type()) {
    case at::kFloat: return sdd_impl<float>(l, r, crow, col, block, k_tile);
    case at::kBFloat16: return sdd_impl<at::BFloat16>(l, r, crow, col, block, k_tile);
    case at::kHalf: return sdd_impl<at::Half>(l, r, crow, col, block, k_tile);
    default: TORCH_CHECK(false, "bsr_sdd: unsupported dtype ", a.scalar_type());
  }
}

}  // namespace sparse_ext
