// Row copies shared by every native block-sparse CPU path: fp32 accumulators to the output dtype
// (optionally adding a bias) and tiled transposes.
#pragma once

#include <immintrin.h>

#include <ATen/ATen.h>

#include <algorithm>
#include <cstring>
#include <vector>

namespace sparse_ext::bsr {

// ------------------------------------------------------------------ fp32 -> output dtype
// A scalar bf16/fp16 rounding loop would cost as much as the sparse GEMM itself at 4096 x 3072 outputs;
// AVX-512 converts 16 at a time (runtime-checked: the extension is built for the baseline ISA).
__attribute__((target("avx512f,avx512bf16,avx512vl"))) inline void cvt_bf16_avx512(const float* s, at::BFloat16* d,
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

__attribute__((target("avx512f"))) inline void cvt_f16_avx512(const float* s, at::Half* d, int64_t n,
                                                               const float* bias) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    __m512 x = _mm512_loadu_ps(s + i);
    if (bias) x = _mm512_add_ps(x, _mm512_loadu_ps(bias + i));
    __m256i v = _mm512_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(d + i), v);
  }
  for (; i < n; ++i) d[i] = at::Half(s[i] + (bias ? bias[i] : 0.f));
}

inline const bool kHasBf16Cvt = __builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("avx512vl");
inline const bool kHasF16Cvt = __builtin_cpu_supports("avx512f");

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
inline void store_empty(T* dst, int64_t ld, int64_t rows, int64_t n, const float* bias) {
  if (!bias) {
    for (int64_t r = 0; r < rows; ++r) std::memset(dst + r * ld, 0, n * sizeof(T));
    return;
  }
  const std::vector<float> zero(n, 0.f);
  for (int64_t r = 0; r < rows; ++r) store_row(zero.data(), dst + r * ld, n, bias);
}

// dst[c * ld_dst + r] = src[r * ld_src + c] for r < rows, c < cols (tiled for cache locality).
template <typename T>
inline void transpose_into(const T* src, int64_t ld_src, T* dst, int64_t ld_dst, int64_t rows, int64_t cols) {
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

}  // namespace sparse_ext::bsr
