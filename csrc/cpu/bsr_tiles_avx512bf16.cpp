// AVX512-BF16 microkernels of the bf16 tile drivers (csrc/cpu/bsr_tile_drivers.cpp), for CPUs with
// AVX512-BF16 but no AMX (AMD Zen 4/5, Intel Cooper Lake), where oneDNN's brgemm cannot pack bf16 (see
// could_pack). Same contracts as the AMX ones, on the same VNNI B panels: vdpbf16ps takes a (k, k+1) pair
// of A broadcast as one 32-bit lane against a VNNI row of B (16 columns x 2 K), so a 32-column panel row
// is two zmm loads. The 32 x 32 output tile is done as four 8-row strips: 16 fp32 accumulators + 2 B + 1
// broadcast register per strip (of 32); a B panel (bs * 32 bf16, 2..8 KB) stays in L1 across the strips.
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "sparse/bsr_tiles.h"

namespace sparse_ext::bsr {
namespace {

__attribute__((target("avx512f,avx512bf16"), always_inline)) inline void avx_zero(__m512 (&acc)[8][2]) {
  for (int i = 0; i < 8; ++i) acc[i][0] = acc[i][1] = _mm512_setzero_ps();
}

// acc[i] += A[i, k..k+kl) @ B[k..k+kl, 0..32) for i < 8: the (k, k+1) pair of A's row i is the 32 bits at
// a + i * row_s + (k / 2) * pair_s (row-major A: row_s = lda, pair_s = 2; VNNI A [k/2][M][2]: row_s = 2,
// pair_s = 2 M), B VNNI rows of 64 bf16 at stride ldb2 elements (one row per K pair); kl even.
__attribute__((target("avx512f,avx512bf16"), always_inline)) inline void avx_strip(__m512 (&acc)[8][2],
                                                                                    const bf16* a, int64_t row_s,
                                                                                    int64_t pair_s, const bf16* b,
                                                                                    int64_t ldb2, int64_t kl) {
  for (int64_t k = 0; k < kl; k += 2) {
    const __m512bh b0 = (__m512bh)_mm512_loadu_si512(b + (k / 2) * ldb2);
    const __m512bh b1 = (__m512bh)_mm512_loadu_si512(b + (k / 2) * ldb2 + 32);
    const bf16* ak = a + (k / 2) * pair_s;
#pragma GCC unroll 8
    for (int i = 0; i < 8; ++i) {
      int32_t pair;
      std::memcpy(&pair, ak + i * row_s, sizeof(pair));
      const __m512bh av = (__m512bh)_mm512_set1_epi32(pair);
      acc[i][0] = _mm512_dpbf16_ps(acc[i][0], av, b0);
      acc[i][1] = _mm512_dpbf16_ps(acc[i][1], av, b1);
    }
  }
}

// C[32, 32] (+)= A @ B with A's pairs addressed as in avx_strip (strip r0 starts at a + r0 * row_s).
__attribute__((target("avx512f,avx512bf16"), always_inline)) inline void avx_gemm(const bf16* a, int64_t row_s,
                                                                                   int64_t pair_s, const bf16* b,
                                                                                   int64_t ldb, int64_t k, float* c,
                                                                                   int64_t ldc, bool add) {
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
    avx_strip(acc, a + r0 * row_s, row_s, pair_s, b, 2 * ldb, k);
    for (int i = 0; i < 8; ++i) {
      _mm512_storeu_ps(c + (r0 + i) * ldc, acc[i][0]);
      _mm512_storeu_ps(c + (r0 + i) * ldc + 16, acc[i][1]);
    }
  }
}

}  // namespace

// Same contract as amx_acc_32x32.
SPARSE_TARGET_AVX512BF16 void avx512bf16_acc_32x32(const bf16* a, int64_t lda, const int32_t* ip, int64_t p0,
                                                   int64_t p1, const bf16* w, int64_t w_stride, int64_t bs,
                                                   float* c) {
  for (int64_t r0 = 0; r0 < 32; r0 += 8) {
    __m512 acc[8][2];
    avx_zero(acc);
    for (int64_t p = p0; p < p1; ++p)
      avx_strip(acc, a + r0 * lda + static_cast<int64_t>(ip[p]) * bs, lda, 2, w + p * w_stride, 64, bs);
    for (int i = 0; i < 8; ++i) {
      _mm512_storeu_ps(c + (r0 + i) * 32, acc[i][0]);
      _mm512_storeu_ps(c + (r0 + i) * 32 + 16, acc[i][1]);
    }
  }
}

SPARSE_TARGET_AVX512BF16 void avx512bf16_acc_32x32_bf16(const bf16* a, int64_t lda, const int32_t* ip, int64_t p0,
                                                        int64_t p1, const bf16* w, int64_t w_stride, int64_t bs,
                                                        bf16* d, int64_t ldd, int64_t m, const float* bias) {
  __m512 b0 = _mm512_setzero_ps(), b1 = _mm512_setzero_ps();
  if (bias) {
    b0 = _mm512_loadu_ps(bias);
    b1 = _mm512_loadu_ps(bias + 16);
  }
  for (int64_t r0 = 0; r0 < m; r0 += 8) {
    __m512 acc[8][2];
    avx_zero(acc);
    for (int64_t p = p0; p < p1; ++p)
      avx_strip(acc, a + r0 * lda + static_cast<int64_t>(ip[p]) * bs, lda, 2, w + p * w_stride, 64, bs);
    const int64_t rows = std::min<int64_t>(8, m - r0);
    for (int64_t i = 0; i < rows; ++i) {
      // one rounding (RNE, as store_row's cvtneps) of accumulator + bias
      const __m512bh v = _mm512_cvtne2ps_pbh(_mm512_add_ps(acc[i][1], b1), _mm512_add_ps(acc[i][0], b0));
      _mm512_storeu_si512(d + (r0 + i) * ldd, (__m512i)v);
    }
  }
}

// Same contract as amx_gemm_32x32.
SPARSE_TARGET_AVX512BF16 void avx512bf16_gemm_32x32(const bf16* a, int64_t lda, const bf16* b, int64_t ldb,
                                                    int64_t k, float* c, int64_t ldc, bool add) {
  avx_gemm(a, lda, 2, b, ldb, k, c, ldc, add);
}

SPARSE_TARGET_AVX512BF16 void avx512bf16_gemm_32x32_vnni_a(const bf16* a, int64_t lda, const bf16* b, int64_t ldb,
                                                           int64_t k, float* c, int64_t ldc, bool add) {
  avx_gemm(a, 2, 2 * lda, b, ldb, k, c, ldc, add);
}

}  // namespace sparse_ext::bsr
