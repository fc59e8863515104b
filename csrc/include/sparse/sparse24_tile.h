// 2:4 prune + compress (CUTLASS metadata layout), exact transposable 2:4 fused with compression of W and
// W^T, decompression, and MVUE (minimum-variance unbiased) 1:2 / 2:4 sparsification of gradients.
//
// Everything per element group / per 4x4 tile / per 16-bit metadata word is a __host__ __device__ function
// here, shared verbatim by the C++ launcher (csrc/cpu/sparse24_cpu.cpp, what the CPU tests run) and the CUDA
// kernels (csrc/cuda/sparse24_cuda.cu).
//
// Compressed format (the one torch.sparse's CUTLASS semi-structured tensors and torch._sparse_semi_structured_mm /
// _linear take for fp16/bf16; torch/sparse/_semi_structured_conversions.py is the reference):
//  * values [R, C/2]: the two kept values of each group of 4 along a row, in column order;
//  * one 4-bit code per group: bits 0-1 = index of the first kept element, bits 2-3 = index of the second
//    (i0 < i1); four groups (16 columns) per int16 word, group q at bits 4q..4q+3: logical meta [R, C/16];
//  * the words reordered into CUTLASS's ColumnMajorInterleaved<2> tile layout (cutlass_meta_offset below),
//    which needs R % 32 == 0 and C % 32 == 0 (words are interleaved in pairs of word columns: C % 16 alone would
//    make the reordered offsets run past the buffer). The storage is returned as int16 [R, C/16].
// fp32 values use the same (2:4, int16) format: torch's own fp32 CUTLASS path is 1:2 (tf32), which a 2:4 mask
// does not satisfy, so fp32 is for round trips and the CPU fallback, not for the GPU GEMMs.
#pragma once

#include <stdint.h>

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "sparse/common.h"
#include "sparse/dropout.h"  // dropout::philox4x32_10 (SPARSE_HD), the project's counter-based generator

namespace sparse_ext {
namespace s24 {

// |v| in fp32 (exact for fp16/bf16) with -0.0 -> +0.0, as the mask solvers score.
template <typename T>
SPARSE_HD float absf(T v) {
  const float f = static_cast<float>(v);
  return f < 0.0f ? -f : (f > 0.0f ? f : 0.0f);
}

// CUTLASS metadata reordering (torch's _calculate_meta_reordering_scatter_offsets for int16 metadata):
// logical word (r, c) of meta [R, C/16] goes to flat offset cutlass_meta_offset(r, c, R) of the storage.
SPARSE_HD int64_t cutlass_meta_offset(int64_t r, int64_t c, int64_t rows) {
  int64_t dr = (r / 32) * 32 + (r % 8) * 4 + (r % 32) / 8;
  int64_t dc = c;
  if ((dr % 2 == 0) && (dc % 2 == 1)) {  // swap the off-diagonal entries of each 2x2 block
    dr += 1;
    dc -= 1;
  } else if ((dr % 2 == 1) && (dc % 2 == 0)) {
    dr -= 1;
    dc += 1;
  }
  return (dc / 2) * rows * 2 + dr * 2 + (dc % 2);
}

// Kept positions (bit k = element k) of a group of 4: the 2 largest |v|, ties towards the lower index
// (the rank rule of group_nm / sparse.masks.nm_mask, so the same mask).
// Two scans instead of the O(m^2) rank count: the first scan finds rank 0 (the largest, lowest index among equals),
// the second the best of the others in the same order (value descending, index ascending) = rank 1.
template <typename T>
SPARSE_HD uint32_t top2_bits(const T* v) {
  float a[4];
  for (int k = 0; k < 4; ++k) a[k] = absf(v[k]);
  int i0 = 0;
  for (int k = 1; k < 4; ++k)
    if (a[k] > a[i0]) i0 = k;
  int i1 = i0 == 0 ? 1 : 0;
  for (int k = i1 + 1; k < 4; ++k)
    if (k != i0 && a[k] > a[i1]) i1 = k;
  return (1u << i0) | (1u << i1);
}

// Pack 16 consecutive elements v[0..15] with kept bits keep16 (exactly two per nibble) into 8 values and one
// metadata word. Returns the word (nibble q = i0 | i1 << 2 of group q).
template <typename T>
SPARSE_HD uint16_t pack_word(const T* v, uint32_t keep16, T* out8) {
  uint32_t word = 0;
  for (int q = 0; q < 4; ++q) {
    const uint32_t b = (keep16 >> (4 * q)) & 0xFu;
    int i0 = -1, i1 = -1;
    for (int k = 0; k < 4; ++k)
      if ((b >> k) & 1u) {
        if (i0 < 0) i0 = k; else i1 = k;
      }
    // Callers pass exactly two bits per group; fall back to a valid code rather than index -1.
    if (i0 < 0) {
      i0 = 0;
      i1 = 1;
    } else if (i1 < 0) {
      i1 = i0 == 3 ? 3 : i0 + 1;
      i0 = i0 == 3 ? 2 : i0;
    }
    out8[2 * q] = v[4 * q + i0];
    out8[2 * q + 1] = v[4 * q + i1];
    word |= (uint32_t)(i0 | (i1 << 2)) << (4 * q);
  }
  return (uint16_t)word;
}

// Inverse of pack_word: 8 values and a word -> 16 dense elements (zeros elsewhere).
template <typename T>
SPARSE_HD void unpack_word(const T* in8, uint16_t word, T* out16) {
  for (int k = 0; k < 16; ++k) out16[k] = T(0.0f);
  for (int q = 0; q < 4; ++q) {
    const int nib = (word >> (4 * q)) & 0xF;
    out16[4 * q + (nib & 3)] = in8[2 * q];
    out16[4 * q + (nib >> 2)] = in8[2 * q + 1];
  }
}

// ------------------------------------------------------------------------------------------------------------
// Exact transposable 2:4 of one 4x4 tile: the best of the 90 0/1 matrices with two ones per row and column.
// Same arithmetic, order and tie rule as the enumeration solver (tile_enum with pattern_table(2, 4), which
// sparse.masks.transposable_mask(method="exact") runs): row-combination sums (0 + s[c0]) + s[c1] in fp32, pattern
// sums rs0 + rs1 + rs2 + rs3 left to right, the first pattern with the strictly largest sum wins (patterns in
// lexicographic order of their row-combination indices), so both give the same mask bit for bit.
// ------------------------------------------------------------------------------------------------------------
constexpr int kPatterns = 90;
// Row combinations of C(4, 2) in lexicographic order, as 4-bit masks: (0,1) (0,2) (0,3) (1,2) (1,3) (2,3).
#define SPARSE_S24_COMBOS {0x3, 0x5, 0x9, 0x6, 0xA, 0xC}
// Each pattern: the combination index of rows 0..3 as 4 digits (sparse/masks/_enum.py pattern_table(2, 4)).
#define SPARSE_S24_PATTERNS                                                                                    \
  {0x0055, 0x0145, 0x0154, 0x0235, 0x0253, 0x0325, 0x0352, 0x0415, 0x0451, 0x0505, 0x0514, 0x0523, 0x0532, \
   0x0541, 0x0550, 0x1045, 0x1054, 0x1144, 0x1234, 0x1243, 0x1324, 0x1342, 0x1405, 0x1414, 0x1423, 0x1432, \
   0x1441, 0x1450, 0x1504, 0x1540, 0x2035, 0x2053, 0x2134, 0x2143, 0x2233, 0x2305, 0x2314, 0x2323, 0x2332, \
   0x2341, 0x2350, 0x2413, 0x2431, 0x2503, 0x2530, 0x3025, 0x3052, 0x3124, 0x3142, 0x3205, 0x3214, 0x3223, \
   0x3232, 0x3241, 0x3250, 0x3322, 0x3412, 0x3421, 0x3502, 0x3520, 0x4015, 0x4051, 0x4105, 0x4114, 0x4123, \
   0x4132, 0x4141, 0x4150, 0x4213, 0x4231, 0x4312, 0x4321, 0x4411, 0x4501, 0x4510, 0x5005, 0x5014, 0x5023, \
   0x5032, 0x5041, 0x5050, 0x5104, 0x5140, 0x5203, 0x5230, 0x5302, 0x5320, 0x5401, 0x5410, 0x5500}

#if defined(__CUDACC__)
__constant__ uint8_t kComboDev[6] = SPARSE_S24_COMBOS;
__constant__ uint16_t kPatternDev[kPatterns] = SPARSE_S24_PATTERNS;
#endif
static const uint8_t kComboHost[6] = SPARSE_S24_COMBOS;
static const uint16_t kPatternHost[kPatterns] = SPARSE_S24_PATTERNS;

SPARSE_HD uint32_t combo_bits(int c) {
#if defined(__CUDA_ARCH__)
  return kComboDev[c];
#else
  return kComboHost[c];
#endif
}

SPARSE_HD uint32_t pattern_digits(int p) {
#if defined(__CUDA_ARCH__)
  return kPatternDev[p];
#else
  return kPatternHost[p];
#endif
}

SPARSE_HD int combo_first(int c) { return c < 3 ? 0 : (c < 5 ? 1 : 2); }
SPARSE_HD int combo_second(int c) { return c < 3 ? c + 1 : (c < 5 ? c - 1 : 3); }

// Kept bits of the 4x4 tile at w (row stride ld): bit 4*i + j = element (i, j).
template <typename T>
SPARSE_HD uint32_t exact_tile_bits(const T* w, int64_t ld) {
  float rs[4][6];
  for (int i = 0; i < 4; ++i) {
    float s[4];
    for (int j = 0; j < 4; ++j) s[j] = absf(w[i * ld + j]);
    for (int c = 0; c < 6; ++c) {
      float acc = 0.0f;
      acc += s[combo_first(c)];
      acc += s[combo_second(c)];
      rs[i][c] = acc;
    }
  }
  float best = -1.0f;
  uint32_t arg = 0;
  for (int p = 0; p < kPatterns; ++p) {
    const uint32_t d = pattern_digits(p);
    float acc = 0.0f;
    acc += rs[0][(d >> 12) & 0xF];
    acc += rs[1][(d >> 8) & 0xF];
    acc += rs[2][(d >> 4) & 0xF];
    acc += rs[3][d & 0xF];
    if (acc > best) { best = acc; arg = d; }
  }
  return combo_bits((arg >> 12) & 0xF) | (combo_bits((arg >> 8) & 0xF) << 4) |
         (combo_bits((arg >> 4) & 0xF) << 8) | (combo_bits(arg & 0xF) << 12);
}

// Row-major kept bits of 16 W elements W[r0 + k][c] (k < 16, one W^T metadata word) from the tile masks of the
// four tiles they cross: tbits[t] belongs to tile rows r0 + 4t .. r0 + 4t + 3, and c % 4 is the tile column.
SPARSE_HD uint32_t column_keep16(const uint32_t* tbits4, int tile_col) {
  uint32_t keep = 0;
  for (int k = 0; k < 16; ++k) keep |= ((tbits4[k / 4] >> (4 * (k % 4) + tile_col)) & 1u) << k;
  return keep;
}

// ------------------------------------------------------------------------------------------------------------
// MVUE sparsification (see sparse/ops/sparse24.py for the construction and the unbiasedness proof).
// ------------------------------------------------------------------------------------------------------------
// Uniform in [0, 1) from the 32-bit Philox word of group g: (seed, offset) -> counter (g, offset), key seed.
SPARSE_HD float group_uniform(uint64_t g, uint32_t k0, uint32_t k1, uint32_t off_lo, uint32_t off_hi) {
  uint32_t c[4] = {(uint32_t)g, (uint32_t)(g >> 32), off_lo, off_hi};
  dropout::philox4x32_10(c, k0, k1);
  return (float)(c[0] >> 8) * (1.0f / 16777216.0f);  // 24 bits: exactly representable in fp32
}

// 1:2: keep a_i with probability |a_i| / (|a_0| + |a_1|), as sign(a_i) (|a_0| + |a_1|); a zero pair stays zero.
template <typename T>
SPARSE_HD void mvue_pair(const T* in, T* out, float u) {
  const float a0 = static_cast<float>(in[0]), a1 = static_cast<float>(in[1]);
  const float m0 = absf(in[0]), m1 = absf(in[1]);
  const float s = m0 + m1;
  out[0] = T(0.0f);
  out[1] = T(0.0f);
  if (!(s > 0.0f)) return;
  if (u * s < m0) out[0] = T(a0 < 0.0f ? -s : s);
  else out[1] = T(a1 < 0.0f ? -s : s);
}

// 2:4: inclusion probabilities p_i = min(1, c |a_i|) with sum 2 (at most one is capped), two elements drawn by
// systematic sampling (each i kept with probability exactly p_i, never more than two), kept value a_i / p_i.
template <typename T>
SPARSE_HD void mvue_group4(const T* in, T* out, float u) {
  float a[4], m[4], p[4];
  float s = 0.0f, mx = 0.0f;
  int imx = 0, nz = 0;
  for (int k = 0; k < 4; ++k) {
    a[k] = static_cast<float>(in[k]);
    m[k] = absf(in[k]);
    s += m[k];
    nz += m[k] > 0.0f;
    if (m[k] > mx) { mx = m[k]; imx = k; }
    out[k] = T(0.0f);
  }
  if (nz <= 2) {  // already 2:4: kept exactly (p = 1 for the non-zeros)
    for (int k = 0; k < 4; ++k) out[k] = in[k];
    return;
  }
  if (2.0f * mx >= s) {  // the largest would get p > 1: cap it at 1, the others share the second draw
    const float rest = s - mx;
    for (int k = 0; k < 4; ++k) p[k] = (k == imx) ? 1.0f : m[k] / rest;
  } else {
    for (int k = 0; k < 4; ++k) p[k] = 2.0f * m[k] / s;
  }
  // Systematic sampling: points u and u + 1 on the cumulated probabilities (total 2); element k owns
  // [P_k, P_k + p_k). Each p_k <= 1, so the two points fall in two different elements. The last element owns
  // the rest of [0, 2) so rounding never leaves a point unowned.
  float lo = 0.0f;
  int kept = 0;
  for (int k = 0; k < 4 && kept < 2; ++k) {
    const float hi = (k == 3) ? 2.0f : lo + p[k];
    const bool hit = (u >= lo && u < hi) || (u + 1.0f >= lo && u + 1.0f < hi);
    if (hit && p[k] > 0.0f) {
      out[k] = T(a[k] / p[k]);
      ++kept;
    }
    lo = hi;
  }
}

}  // namespace s24
}  // namespace sparse_ext

#include <ATen/ATen.h>

#include <vector>

namespace pybind11 {
class module_;
}

namespace sparse_ext {
// Launchers. w / g: 2-D contiguous float32, float16 or bfloat16; shapes checked (TORCH_CHECK) first.
// compress: R % 32 == 0, C % 32 == 0; returns {values [R, C/2], meta int16 [R, C/16]}
// and with transposable also {values_t [C, R/2], meta_t int16 [C, R/16]}. decompress: the same shape rules.
std::vector<at::Tensor> sparse24_compress_cpu(const at::Tensor& w, bool transposable);
at::Tensor sparse24_mask_cpu(const at::Tensor& w, bool transposable);
at::Tensor sparse24_decompress_cpu(const at::Tensor& values, const at::Tensor& meta);
// seed_offset: int64 CPU tensor [2]; m = 2 (1:2) or 4 (2:4) along dim 1.
at::Tensor sparse24_mvue_cpu(const at::Tensor& g, const at::Tensor& seed_offset, int64_t m);
#ifdef SPARSE_WITH_CUDA
std::vector<at::Tensor> sparse24_compress_cuda(const at::Tensor& w, bool transposable);
at::Tensor sparse24_mask_cuda(const at::Tensor& w, bool transposable);
at::Tensor sparse24_decompress_cuda(const at::Tensor& values, const at::Tensor& meta);
at::Tensor sparse24_mvue_cuda(const at::Tensor& g, const at::Tensor& seed_offset, int64_t m);
#endif
// Adds sparse24_compress, sparse24_mask, sparse24_decompress, sparse24_mvue (device-dispatched) to the module.
void register_sparse24(pybind11::module_& mod);
}  // namespace sparse_ext
