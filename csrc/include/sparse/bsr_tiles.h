// The bf16 tile kernels of the native block-sparse matmuls: one set of drivers
// (csrc/cpu/bsr_tile_drivers.cpp) over two families of 32 x 32 microkernels, AMX
// (csrc/cpu/bsr_tiles_amx.cpp) and AVX512-BF16 (csrc/cpu/bsr_tiles_avx512bf16.cpp).
#pragma once

#include <ATen/ATen.h>

#include "sparse/bsr_isa.h"

// The microkernels are compiled for their ISA only (the rest of the extension for the baseline one);
// declarations and definitions carry the same target, else g++ would take them for two versions.
#define SPARSE_TARGET_AMX __attribute__((target("amx-tile,amx-bf16")))
#define SPARSE_TARGET_AVX512BF16 __attribute__((target("avx512f,avx512bf16")))

namespace sparse_ext::bsr {

using bf16 = at::BFloat16;

// ---- microkernels (B operands are VNNI panels: element (k, n) at [k/2][n][2])
// C[32, 32] (fp32, ld 32) = sum_{p in [p0, p1)} A_p[32, bs] @ Bp[bs, 32]; A_p = a + ip[p] * bs (row stride
// lda elements), Bp = VNNI panel [bs/2][32][2] at w + p * w_stride.
SPARSE_TARGET_AMX void amx_acc_32x32(const bf16* a, int64_t lda, const int32_t* ip, int64_t p0, int64_t p1,
                                     const bf16* w, int64_t w_stride, int64_t bs, float* c);
// C[32, 32] (+)= A[32, k] @ B[k, 32]: A row-major (row stride lda), B VNNI [k/2][ldb][2] (column offset
// already applied); k a multiple of 32; C fp32 row stride ldc; add: accumulate into C instead of zeroing.
SPARSE_TARGET_AMX void amx_gemm_32x32(const bf16* a, int64_t lda, const bf16* b, int64_t ldb, int64_t k, float* c,
                                      int64_t ldc, bool add);
// Per-thread AMX state around a run of amx_* calls.
SPARSE_TARGET_AMX void amx_begin();
void amx_end();

// Same contracts as amx_acc_32x32 / amx_gemm_32x32, with vdpbf16ps (no per-thread state).
SPARSE_TARGET_AVX512BF16 void avx512bf16_acc_32x32(const bf16* a, int64_t lda, const int32_t* ip, int64_t p0,
                                                   int64_t p1, const bf16* w, int64_t w_stride, int64_t bs,
                                                   float* c);
// avx512bf16_acc_32x32 with the epilogue fused: rows r < m of the result, plus bias[0..32) (fp32, or
// nullptr), rounded once to bf16 straight from the registers into d (row stride ldd); rows >= m are not
// computed past their strip nor stored (A must still be readable for 32 rows' strips it starts).
SPARSE_TARGET_AVX512BF16 void avx512bf16_acc_32x32_bf16(const bf16* a, int64_t lda, const int32_t* ip, int64_t p0,
                                                        int64_t p1, const bf16* w, int64_t w_stride, int64_t bs,
                                                        bf16* d, int64_t ldd, int64_t m, const float* bias);
SPARSE_TARGET_AVX512BF16 void avx512bf16_gemm_32x32(const bf16* a, int64_t lda, const bf16* b, int64_t ldb,
                                                    int64_t k, float* c, int64_t ldc, bool add);
// avx512bf16_gemm_32x32 with A as VNNI pairs too: element (i, k) at a[(k / 2) * 2 * lda + 2 * i + k % 2] (A^T
// pair-interleaved like B, lda = A^T's row length): both operands of SDD come from token-major
// activations by the same vectorised pair interleave, no transpose (vdpbf16ps broadcasts a pair).
SPARSE_TARGET_AVX512BF16 void avx512bf16_gemm_32x32_vnni_a(const bf16* a, int64_t lda, const bf16* b,
                                                           int64_t ldb, int64_t k, float* c, int64_t ldc, bool add);

// ---- drivers (isa: kAmx or kAvx512Bf16; bf16 operands, bs a multiple of 32)
// bsr_dds_cpu's contract (sparse/bsr_cpu.h) with checked, contiguous a and data and an fp32 bias (or nullptr).
at::Tensor dds_tiles(TileIsa isa, const at::Tensor& a, const at::Tensor& data, const at::Tensor& seg,
                     const at::Tensor& idx, const at::Tensor& dptr, bool trans_w, int64_t m_tile, const float* bias);
// Kept blocks of Ls^T @ Rs for token-major Ls [K, M], Rs [K, N] (contiguous); colsum (or nullptr): zeroed
// fp32 [M] that receives Ls's column sums.
at::Tensor sdd_tiles(TileIsa isa, const at::Tensor& ls, const at::Tensor& rs, const at::Tensor& crow,
                     const at::Tensor& col, const at::Tensor& ccol, const at::Tensor& row_t, const at::Tensor& perm_t,
                     int64_t bs, int64_t k_tile, float* colsum);

}  // namespace sparse_ext::bsr
