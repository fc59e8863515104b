// Drivers of the bf16 tile kernels (bf16, blocks a multiple of 32): DDS keeps one 32 x 32 fp32 output
// tile in registers across all kept blocks of an output block; SDD packs per-thread, cache-resident
// K-chunks. The microkernels (AMX: bsr_tiles_amx.cpp, AVX512-BF16: bsr_tiles_avx512bf16.cpp) are
// template arguments, so every call to them is direct.
//
// Threads: at::parallel_for (torch's pool, honours torch.set_num_threads), one region per kernel call
// (on a shared machine every region's join can cost a scheduler slice); each region ends with the
// family's end() because AMX tile state is per thread.
#include <immintrin.h>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

#include "sparse/bsr_rows.h"
#include "sparse/bsr_tiles.h"

namespace sparse_ext::bsr {
namespace {

void no_tile_state() {}

// One kernel family: per-thread setup/teardown and the two microkernels (direct calls: the pointers are
// compile-time constants).
// GemmVnniA (or nullptr): the gemm taking A as VNNI pairs of A^T (SDD then packs both operands by the same
// vectorised interleave instead of transposing one; AMX tiles need A row-major).
// AccBf16 (or nullptr): acc with the output rounding and bias fused (no fp32 tile through memory; AMX
// tiles can only be stored as fp32).
template <void (*Begin)(), void (*End)(), decltype(&amx_acc_32x32) Acc, decltype(&amx_gemm_32x32) Gemm,
          decltype(&amx_gemm_32x32) GemmVnniA = nullptr, decltype(&avx512bf16_acc_32x32_bf16) AccBf16 = nullptr>
struct TileKernels {
  static constexpr auto begin = Begin;
  static constexpr auto end = End;
  static constexpr auto acc = Acc;
  static constexpr auto gemm = Gemm;
  static constexpr auto gemm_vnni_a = GemmVnniA;
  static constexpr bool kVnniA = GemmVnniA != nullptr;
  static constexpr auto acc_bf16 = AccBf16;
  static constexpr bool kAccBf16 = AccBf16 != nullptr;
};
using AmxKernels = TileKernels<amx_begin, amx_end, amx_acc_32x32, amx_gemm_32x32>;
using Avx512Bf16Kernels = TileKernels<no_tile_state, no_tile_state, avx512bf16_acc_32x32, avx512bf16_gemm_32x32,
                                      avx512bf16_gemm_32x32_vnni_a, avx512bf16_acc_32x32_bf16>;
// The AVX512-BF16 microkernels through the AMX driver paths (row-major A in SDD, fp32 tile then store_row
// in DDS): what SPARSE_BSR_TEST_AMX_PATHS=1 runs, so those paths are tested on CPUs without AMX.
using Avx512Bf16RowAKernels = TileKernels<no_tile_state, no_tile_state, avx512bf16_acc_32x32, avx512bf16_gemm_32x32>;

// VNNI copy of rows [r0, r1) (r0 even) of a row-major [k, n] bf16 matrix into dst [kp/2][ld_d][2] (columns
// 0..n of each pair row; ld_d >= n, 0: n); rows >= k read as zero.
__attribute__((target("avx512f,avx512bw"))) void vnni_rows(const bf16* s, int64_t ld_s, int64_t k, int64_t n,
                                                           bf16* d, int64_t r0, int64_t r1, int64_t ld_d = 0) {
  if (ld_d == 0) ld_d = n;
  alignas(64) static const uint16_t lo_idx[32] = {0, 32, 1, 33, 2, 34, 3, 35, 4, 36, 5, 37, 6, 38, 7, 39,
                                                  8, 40, 9, 41, 10, 42, 11, 43, 12, 44, 13, 45, 14, 46, 15, 47};
  alignas(64) static const uint16_t hi_idx[32] = {16, 48, 17, 49, 18, 50, 19, 51, 20, 52, 21, 53, 22, 54, 23, 55,
                                                  24, 56, 25, 57, 26, 58, 27, 59, 28, 60, 29, 61, 30, 62, 31, 63};
  const __m512i lo = _mm512_load_si512(lo_idx), hi = _mm512_load_si512(hi_idx);
  for (int64_t r = r0; r < r1; r += 2) {
    bf16* out = d + r * ld_d;
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

// In-register transpose of 16 x 16 32-bit lanes (r[i] lane j -> r[j] lane i).
__attribute__((target("avx512f"), always_inline)) inline void transpose16x16_epi32(__m512i (&r)[16]) {
  __m512i t[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {
    r[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
    r[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
    r[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
    r[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
  }
  for (int h = 0; h < 16; h += 8)
    for (int i = 0; i < 4; ++i) {
      t[h + i] = _mm512_shuffle_i32x4(r[h + i], r[h + i + 4], 0x88);
      t[h + i + 4] = _mm512_shuffle_i32x4(r[h + i], r[h + i + 4], 0xdd);
    }
  for (int i = 0; i < 8; ++i) {
    r[i] = _mm512_shuffle_i32x4(t[i], t[i + 8], 0x88);
    r[i + 8] = _mm512_shuffle_i32x4(t[i], t[i + 8], 0xdd);
  }
}

// d[m * ld_d + k] = s[k * ld_s + m] for m < n (a multiple of 16), k < klp (a multiple of 32; rows k >= kl read
// as zero): a token-major bf16 operand as the row-major A of the AMX tiles. Per 32 x 16 block, pairs of
// token rows are interleaved into 32-bit lanes and the 16 x 16 lanes transposed in registers (the scalar
// tiled transpose cost as much as the AMX products of a MiniLM FFN's dW at 90 % sparsity).
__attribute__((target("avx512f,avx512bw"))) void transpose_rows_bf16(const bf16* s, int64_t ld_s, int64_t kl,
                                                                     int64_t n, bf16* d, int64_t ld_d, int64_t klp) {
  for (int64_t k0 = 0; k0 < klp; k0 += 32) {
    for (int64_t m0 = 0; m0 < n; m0 += 16) {
      __m512i r[16];
      for (int i = 0; i < 16; ++i) {
        const int64_t ka = k0 + 2 * i, kb = ka + 1;
        const __m512i lo = ka < kl ? _mm512_cvtepu16_epi32(_mm256_loadu_si256(
                                         reinterpret_cast<const __m256i*>(s + ka * ld_s + m0)))
                                   : _mm512_setzero_si512();
        const __m512i hi = kb < kl ? _mm512_cvtepu16_epi32(_mm256_loadu_si256(
                                         reinterpret_cast<const __m256i*>(s + kb * ld_s + m0)))
                                   : _mm512_setzero_si512();
        r[i] = _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16));  // lane j: (s[ka][m0+j], s[kb][m0+j])
      }
      transpose16x16_epi32(r);  // r[j]: the 16 pairs of column m0+j, i.e. its 32 tokens k0..k0+32
      for (int j = 0; j < 16; ++j) _mm512_storeu_si512(d + (m0 + j) * ld_d + k0, r[j]);
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
at::Tensor dds_tiles_impl(const at::Tensor& a, const at::Tensor& data, const at::Tensor& seg, const at::Tensor& idx,
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

  std::vector<bf16> bias_row(bias ? ld_out : 0);
  if (bias) {
    const std::vector<float> zero(ld_out, 0.f);
    store_row(zero.data(), bias_row.data(), ld_out, bias);
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
          if (p0 == p1) {  // an empty output block: zeros or the bias row, rounded once before the region
            for (int64_t r = 0; r < m; ++r) {
              if (bias) {
                std::memcpy(dst + r * ld_out, bias_row.data() + j * bs, bs * sizeof(bf16));
              } else {
                std::memset(dst + r * ld_out, 0, bs * sizeof(bf16));
              }
            }
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
            const float* bh = bias ? bias + j * bs + h * 32 : nullptr;
            if constexpr (K::kAccBf16) {
              K::acc_bf16(asrc, k_in, ip, p0, p1, pk + h * nnz * bs * 32, bs * 32, bs, dst + h * 32, ld_out, m, bh);
            } else {
              K::acc(asrc, k_in, ip, p0, p1, pk + h * nnz * bs * 32, bs * 32, bs, c);
              for (int64_t r = 0; r < m; ++r) store_row(c + r * 32, dst + r * ld_out + h * 32, 32, bh);
            }
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
// own live columns of the larger operand as VNNI B, and the smaller operand as A (transposed
// in registers for AMX, VNNI pair-interleaved like B for AVX512-BF16), both as 32-column panels. No barriers,
// no full-size temporaries.
template <typename K>
at::Tensor sdd_tiles_impl(const at::Tensor& ls, const at::Tensor& rs, const at::Tensor& crow, const at::Tensor& col,
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
  // K-chunk: k_tile, but no longer than K itself (a short batch must not pay for a full chunk's buffers).
  const int64_t kc = std::min(std::max<int64_t>(32, k_tile / 32 * 32), (k + 31) / 32 * 32);
  at::parallel_for(0, parts, 1, [&](int64_t q0, int64_t q1) {
    K::begin();
    for (int64_t q = q0; q < q1; ++q) {
      const int64_t s0 = bounds[q], s1 = bounds[q + 1], full = (s1 - s0) * bs;
      // Only segments with kept blocks are packed (at 90 % sparsity a quarter of a MiniLM FFN's block rows
      // are empty): compact column slot of each, -1 for empty ones.
      std::vector<int64_t> slot(s1 - s0, -1);
      int64_t n_live = 0;
      for (int64_t sgi = s0; sgi < s1; ++sgi)
        if (seg[sgi] < seg[sgi + 1]) slot[sgi - s0] = n_live++;
      if (n_live == 0) {
        if (colsum && own_rows) add_colsums(op_own + s0 * bs, ld_own, k, full, colsum + s0 * bs);
        continue;
      }
      const int64_t width = n_live * bs;
      // Uninitialised: every element a gemm reads is written below (rows up to klp, zero past K).
      std::unique_ptr<bf16[]> bbuf(new bf16[kc * width]), abuf(new bf16[ld_sh * kc]);
      for (int64_t k0 = 0; k0 < k; k0 += kc) {
        const int64_t kl = std::min(kc, k - k0), klp = (kl + 31) / 32 * 32;
        // Operands as 32-column panels [kc/2][32][2] (one after the other, kc * 32 apart): a gemm streams
        // 128 contiguous bytes per K pair. (Interleaved over the full width, the pair rows lay a multiple
        // of 1.5 KB apart and a K-chunk of them fell into a few L1 sets.)
        for (int64_t sgi = s0; sgi < s1; ++sgi) {
          if (slot[sgi - s0] < 0) continue;
          for (int64_t h = 0; h < bs / 32; ++h)
            vnni_rows(op_own + k0 * ld_own + sgi * bs + h * 32, ld_own, kl, 32,
                      bbuf.get() + (slot[sgi - s0] * (bs / 32) + h) * kc * 32, 0, klp, 32);
        }
        if (colsum && own_rows) add_colsums(op_own + k0 * ld_own + s0 * bs, ld_own, kl, full, colsum + s0 * bs);
        if constexpr (K::kVnniA) {
          for (int64_t h = 0; h < ld_sh / 32; ++h)
            vnni_rows(op_sh + k0 * ld_sh + h * 32, ld_sh, kl, 32, abuf.get() + h * kc * 32, 0, klp, 32);
        } else {
          transpose_rows_bf16(op_sh + k0 * ld_sh, ld_sh, kl, ld_sh, abuf.get(), kc, klp);  // zero past K
        }
        for (int64_t sgi = s0; sgi < s1; ++sgi) {
          for (int64_t p = seg[sgi]; p < seg[sgi + 1]; ++p) {
            const int64_t o = other[p], d = dptr ? dptr[p] : p;
            for (int64_t u = 0; u < bs; u += 32)
              for (int64_t v = 0; v < bs; v += 32) {
                const bf16* bp = bbuf.get() + ((slot[sgi - s0] * bs + v) / 32) * kc * 32;
                float* cp = acc + d * bs * bs + u * bs + v;
                if constexpr (K::kVnniA) {
                  K::gemm_vnni_a(abuf.get() + ((o * bs + u) / 32) * kc * 32, 32, bp, 32, klp, cp, bs, k0 > 0);
                } else {
                  K::gemm(abuf.get() + (o * bs + u) * kc, kc, bp, 32, klp, cp, bs, k0 > 0);
                }
              }
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

}  // namespace

at::Tensor dds_tiles(TileIsa isa, const at::Tensor& a, const at::Tensor& data, const at::Tensor& seg,
                     const at::Tensor& idx, const at::Tensor& dptr, bool trans_w, int64_t m_tile, const float* bias) {
  TORCH_CHECK(isa != TileIsa::kNone, "bsr_dds: no tile kernels for this call");
  if (isa == TileIsa::kAmx) return dds_tiles_impl<AmxKernels>(a, data, seg, idx, dptr, trans_w, m_tile, bias);
  const char* row_a = std::getenv("SPARSE_BSR_TEST_AMX_PATHS");
  if (row_a && row_a[0] == '1')
    return dds_tiles_impl<Avx512Bf16RowAKernels>(a, data, seg, idx, dptr, trans_w, m_tile, bias);
  return dds_tiles_impl<Avx512Bf16Kernels>(a, data, seg, idx, dptr, trans_w, m_tile, bias);
}

at::Tensor sdd_tiles(TileIsa isa, const at::Tensor& ls, const at::Tensor& rs, const at::Tensor& crow,
                     const at::Tensor& col, const at::Tensor& ccol, const at::Tensor& row_t, const at::Tensor& perm_t,
                     int64_t bs, int64_t k_tile, float* colsum) {
  TORCH_CHECK(isa != TileIsa::kNone, "bsr_sdd: no tile kernels for this call");
  if (isa == TileIsa::kAmx)
    return sdd_tiles_impl<AmxKernels>(ls, rs, crow, col, ccol, row_t, perm_t, bs, k_tile, colsum);
  // SPARSE_BSR_TEST_AMX_PATHS=1 (tests): the AVX512-BF16 microkernels on the AMX driver paths (A transposed to
  // row-major by transpose_rows_bf16), so that path is exercised on CPUs without AMX too.
  const char* row_a = std::getenv("SPARSE_BSR_TEST_AMX_PATHS");  // read per call: tests set it at run time
  if (row_a && row_a[0] == '1')
    return sdd_tiles_impl<Avx512Bf16RowAKernels>(ls, rs, crow, col, ccol, row_t, perm_t, bs, k_tile, colsum);
  return sdd_tiles_impl<Avx512Bf16Kernels>(ls, rs, crow, col, ccol, row_t, perm_t, bs, k_tile, colsum);
}

}  // namespace sparse_ext::bsr
