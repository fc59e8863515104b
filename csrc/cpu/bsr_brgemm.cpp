// Native block-sparse matmuls through ATen's cpublas::brgemm (oneDNN ukernels): fp32, blocks of 16,
// and bf16/fp16 where the tile kernels do not run and oneDNN can pack the operands (see could_pack).
// Every kept B x B block is multiplied where it lies in the dense operand (no gathers): runs of adjacent
// kept blocks are one brgemm call with a longer K, B operands packed once per call.
//
// Threads: at::parallel_for (torch's pool, honours torch.set_num_threads); each chunk ends with
// brgemm_release() because the ukernel's AMX tile state is per thread.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/native/CPUBlas.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "sparse/bsr_brgemm.h"
#include "sparse/bsr_rows.h"

namespace sparse_ext::bsr {
namespace {

namespace blas = at::native::cpublas;

template <typename T>
constexpr bool kVnni = !std::is_same_v<T, float>;  // 16-bit operands: B must be VNNI-packed (K pairs)

// oneDNN's packed B accepts ld_b in {16, 32, 48, 64} only: B operands are stored as column panels of
// at most 64 columns (block 128 -> two panels).
inline int64_t panel_width(int64_t bs) { return std::min<int64_t>(bs, 64); }

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

}  // namespace

at::Tensor dds_brgemm(const at::Tensor& a, const at::Tensor& data, const at::Tensor& seg, const at::Tensor& idx,
                      const at::Tensor& dptr, bool trans_w, int64_t m_tile, const float* bias) {
  switch (a.scalar_type()) {
    case at::kFloat: return dds_impl<float>(a, data, seg, idx, dptr, trans_w, m_tile, bias);
    case at::kBFloat16: return dds_impl<at::BFloat16>(a, data, seg, idx, dptr, trans_w, m_tile, bias);
    case at::kHalf: return dds_impl<at::Half>(a, data, seg, idx, dptr, trans_w, m_tile, bias);
    default: TORCH_CHECK(false, "bsr_dds: unsupported dtype ", a.scalar_type());
  }
}

at::Tensor sdd_brgemm(const at::Tensor& l, const at::Tensor& r, const at::Tensor& crow, const at::Tensor& col,
                      int64_t bs, int64_t k_tile) {
  switch (l.scalar_type()) {
    case at::kFloat: return sdd_impl<float>(l, r, crow, col, bs, k_tile);
    case at::kBFloat16: return sdd_impl<at::BFloat16>(l, r, crow, col, bs, k_tile);
    case at::kHalf: return sdd_impl<at::Half>(l, r, crow, col, bs, k_tile);
    default: TORCH_CHECK(false, "bsr_sdd: unsupported dtype ", l.scalar_type());
  }
}

}  // namespace sparse_ext::bsr
