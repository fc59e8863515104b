// C++/OpenMP launchers for the per-tile mask solvers (one OpenMP iteration per tile or group).
#include <omp.h>

#include <algorithm>
#include <cmath>

#include "sparse/launchers.h"
#include "sparse/transposable_tile.h"

namespace sparse_ext {
namespace {

void check_input(const at::Tensor& w, int64_t n, int64_t m, bool tiles, const char* fn) {
  TORCH_CHECK(w.device().is_cpu(), fn, ": expected a CPU tensor, got ", w.device());
  TORCH_CHECK(w.dim() == 2, fn, ": expected a 2-D weight, got ", w.dim(), "-D");
  TORCH_CHECK(w.scalar_type() == at::kFloat || w.scalar_type() == at::kDouble, fn,
              ": expected float32 or float64, got ", w.scalar_type());
  TORCH_CHECK(w.is_contiguous(), fn, ": expected a contiguous tensor");
  TORCH_CHECK(1 <= n && n < m && m <= kMaxM, fn, ": expected 1 <= n < m <= ", kMaxM, ", got n=", n, " m=", m);
  TORCH_CHECK(w.size(1) % m == 0 && (!tiles || w.size(0) % m == 0), fn, ": shape ", w.sizes(),
              " not divisible by m=", m);
}

template <typename T, typename F>
at::Tensor for_each_tile(const at::Tensor& w, int64_t m, F&& f) {
  auto keep = at::empty(w.sizes(), w.options().dtype(at::kBool));
  const int64_t tr = w.size(0) / m, tc = w.size(1) / m, ld = w.size(1);
  const T* wp = w.data_ptr<T>();
  uint8_t* kp = reinterpret_cast<uint8_t*>(keep.data_ptr<bool>());
#pragma omp parallel for schedule(dynamic, 64)
  for (int64_t t = 0; t < tr * tc; ++t) {
    const int64_t r0 = (t / tc) * m, c0 = (t % tc) * m;
    TileView<T> view{wp + r0 * ld + c0, kp + r0 * ld + c0, ld};
    f(view);
  }
  return keep;
}

}  // namespace

at::Tensor transposable_exact_cpu(const at::Tensor& w, int64_t n, int64_t m) {
  check_input(w, n, m, true, "transposable_exact");
  return SPARSE_FLOAT_OR_DOUBLE(w, [&] {
    return for_each_tile<T>(w, m, [&](const TileView<T>& v) { tile_exact(v, (int)n, (int)m); });
  });
}

at::Tensor transposable_greedy_cpu(const at::Tensor& w, int64_t n, int64_t m) {
  check_input(w, n, m, true, "transposable_greedy");
  return SPARSE_FLOAT_OR_DOUBLE(w, [&] {
    return for_each_tile<T>(w, m, [&](const TileView<T>& v) { tile_greedy_repair(v, (int)n, (int)m); });
  });
}

at::Tensor transposable_approx_cpu(const at::Tensor& w, int64_t n, int64_t m, int64_t max_passes) {
  check_input(w, n, m, true, "transposable_approx");
  TORCH_CHECK(0 <= max_passes && max_passes <= (1 << 20), "transposable_approx: max_passes: expected 0..",
              1 << 20, ", got ", max_passes);
  return SPARSE_FLOAT_OR_DOUBLE(w, [&] {
    return for_each_tile<T>(w, m, [&](const TileView<T>& v) { tile_approx(v, (int)n, (int)m, (int)max_passes); });
  });
}

std::pair<at::Tensor, at::Tensor> check_enum_tables(const at::Tensor& combos, const at::Tensor& patterns, int64_t n,
                                                    int64_t m, const char* fn) {
  TORCH_CHECK(combos.scalar_type() == at::kInt && patterns.scalar_type() == at::kInt, fn,
              ": combos and patterns: expected int32, got ", combos.scalar_type(), " and ", patterns.scalar_type());
  TORCH_CHECK(combos.dim() == 2 && patterns.dim() == 2, fn, ": combos and patterns: expected 2-D tensors, got ",
              combos.sizes(), " and ", patterns.sizes());
  TORCH_CHECK(combos.size(0) >= 1 && combos.size(0) <= kMaxEnumCombos && combos.size(1) == n, fn,
              ": combos: expected [1..", kMaxEnumCombos, ", n=", n, "], got ", combos.sizes());
  TORCH_CHECK(patterns.size(0) >= 1 && patterns.size(0) <= (int64_t)1 << 24 && patterns.size(1) == m, fn,
              ": patterns: expected [1..2^24, m=", m, "], got ", patterns.sizes());
  // The kernels index a tile's columns with combos and the combination table with patterns: both are
  // range-checked here, once, so that no table can make them write outside the tile.
  auto c = combos.to(at::kCPU).contiguous();
  auto p = patterns.to(at::kCPU).contiguous();
  const int32_t* cp = c.data_ptr<int32_t>();
  for (int64_t i = 0; i < c.numel(); ++i)
    TORCH_CHECK(0 <= cp[i] && cp[i] < m, fn, ": combos: expected column indices in [0, ", m, "), got ", cp[i],
                " at ", i);
  const int32_t* pp = p.data_ptr<int32_t>();
  for (int64_t i = 0; i < p.numel(); ++i)
    TORCH_CHECK(0 <= pp[i] && pp[i] < c.size(0), fn, ": patterns: expected combination indices in [0, ",
                c.size(0), "), got ", pp[i], " at ", i);
  return {c, p};
}

namespace {

// Enumeration over a batch of kLanes horizontally adjacent tiles at once: every loop over `lane` is
// a straight SIMD loop (same pattern index for all lanes), which is what makes 2:4 matmul-fast.
constexpr int kLanes = 16;

template <typename T>
void enum_tile_row(const T* w, uint8_t* keep, int64_t ld, int64_t tiles_in_row, int n, int m,
                   const int32_t* combos, int nc, const int32_t* pats, int np) {
  T rs[kMaxEnumM * kMaxEnumCombos][kLanes];
  T best[kLanes], acc[kLanes];
  int arg[kLanes];
  for (int64_t t0 = 0; t0 < tiles_in_row; t0 += kLanes) {
    const int lanes = (int)std::min<int64_t>(kLanes, tiles_in_row - t0);
    for (int i = 0; i < m; ++i)
      for (int c = 0; c < nc; ++c) {
        T* out = rs[i * kMaxEnumCombos + c];
        for (int l = 0; l < kLanes; ++l) out[l] = 0;
        for (int q = 0; q < n; ++q) {
          const T* src = w + i * ld + t0 * m + combos[c * n + q];
          for (int l = 0; l < lanes; ++l) out[l] += std::fabs(src[l * m]);
        }
      }
    for (int l = 0; l < kLanes; ++l) { best[l] = -1; arg[l] = 0; }
    for (int p = 0; p < np; ++p) {
      const int32_t* pr = pats + p * m;
      for (int l = 0; l < kLanes; ++l) acc[l] = rs[pr[0]][l];
      for (int i = 1; i < m; ++i) {
        const T* r = rs[i * kMaxEnumCombos + pr[i]];
        for (int l = 0; l < kLanes; ++l) acc[l] += r[l];
      }
      for (int l = 0; l < kLanes; ++l) {
        const bool better = acc[l] > best[l];  // strict: the first best pattern wins ties
        best[l] = better ? acc[l] : best[l];
        arg[l] = better ? p : arg[l];
      }
    }
    for (int l = 0; l < lanes; ++l) {
      uint8_t* k = keep + (t0 + l) * m;
      for (int i = 0; i < m; ++i) {
        for (int j = 0; j < m; ++j) k[i * ld + j] = 0;
        const int c = pats[arg[l] * m + i];
        for (int q = 0; q < n; ++q) k[i * ld + combos[c * n + q]] = 1;
      }
    }
  }
}

template <typename T>
void enum_rows(const T* wp, uint8_t* kp, int64_t tr, int64_t tc, int64_t ld, int n, int m, const int32_t* cp, int nc,
               const int32_t* pp, int np) {
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < tr; ++r) enum_tile_row<T>(wp + r * m * ld, kp + r * m * ld, ld, tc, n, m, cp, nc, pp, np);
}

}  // namespace

at::Tensor transposable_enum_cpu(const at::Tensor& w, int64_t n, int64_t m, const at::Tensor& combos,
                                 const at::Tensor& patterns) {
  check_input(w, n, m, true, "transposable_enum");
  TORCH_CHECK(m <= kMaxEnumM, "transposable_enum: m must be <= ", kMaxEnumM, ", got ", m);
  const auto tables = check_enum_tables(combos, patterns, n, m, "transposable_enum");
  const at::Tensor& c = tables.first;
  const at::Tensor& p = tables.second;
  const int32_t* cp = c.data_ptr<int32_t>();
  const int32_t* pp = p.data_ptr<int32_t>();
  const int nc = (int)c.size(0), np = (int)p.size(0);
  auto keep = at::empty(w.sizes(), w.options().dtype(at::kBool));
  const int64_t tr = w.size(0) / m, tc = w.size(1) / m, ld = w.size(1);
  uint8_t* kp = reinterpret_cast<uint8_t*>(keep.data_ptr<bool>());
  SPARSE_FLOAT_OR_DOUBLE(w, [&] { enum_rows<T>(w.data_ptr<T>(), kp, tr, tc, ld, (int)n, (int)m, cp, nc, pp, np); });
  return keep;
}

namespace {

template <typename T>
void nm_mask_impl(const at::Tensor& w, at::Tensor& keep, int64_t n, int64_t m) {
  const int64_t groups = w.numel() / m;
  const T* wp = w.data_ptr<T>();
  uint8_t* kp = reinterpret_cast<uint8_t*>(keep.data_ptr<bool>());
  const int64_t batches = (groups + kLanes - 1) / kLanes;
  // kLanes groups at a time, values transposed so each comparison is one SIMD loop over lanes;
  // rank(a) = #{b : |w_b| > |w_a| or (|w_b| == |w_a| and b < a)}, kept iff rank < n (as group_nm).
#pragma omp parallel for schedule(static)
  for (int64_t bt = 0; bt < batches; ++bt) {
    const int64_t g0 = bt * kLanes;
    const int lanes = (int)std::min<int64_t>(kLanes, groups - g0);
    T v[kMaxM][kLanes];
    int rank[kLanes];
    for (int a = 0; a < m; ++a)
      for (int l = 0; l < kLanes; ++l) v[a][l] = l < lanes ? std::fabs(wp[(g0 + l) * m + a]) : T(0);
    for (int a = 0; a < m; ++a) {
      for (int l = 0; l < kLanes; ++l) rank[l] = 0;
      for (int b = 0; b < m; ++b) {
        if (b < a)
          for (int l = 0; l < kLanes; ++l) rank[l] += v[b][l] >= v[a][l];
        else if (b > a)
          for (int l = 0; l < kLanes; ++l) rank[l] += v[b][l] > v[a][l];
      }
      for (int l = 0; l < lanes; ++l) kp[(g0 + l) * m + a] = rank[l] < n;
    }
  }
}

}  // namespace

at::Tensor nm_mask_cpu(const at::Tensor& w, int64_t n, int64_t m) {
  check_input(w, n, m, false, "nm_mask");
  auto keep = at::empty(w.sizes(), w.options().dtype(at::kBool));
  SPARSE_FLOAT_OR_DOUBLE(w, [&] { nm_mask_impl<T>(w, keep, n, m); });
  return keep;
}

}  // namespace sparse_ext
