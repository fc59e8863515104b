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
  TORCH_CHECK(w.scalar_type() == at::kFloat, fn, ": expected float32, got ", w.scalar_type());
  TORCH_CHECK(w.is_contiguous(), fn, ": expected a contiguous tensor");
  TORCH_CHECK(1 <= n && n < m && m <= kMaxM, fn, ": expected 1 <= n < m <= ", kMaxM, ", got n=", n, " m=", m);
  TORCH_CHECK(w.size(1) % m == 0 && (!tiles || w.size(0) % m == 0), fn, ": shape ", w.sizes(),
              " not divisible by m=", m);
}

template <typename F>
at::Tensor for_each_tile(const at::Tensor& w, int64_t m, F&& f) {
  auto keep = at::empty(w.sizes(), w.options().dtype(at::kBool));
  const int64_t tr = w.size(0) / m, tc = w.size(1) / m, ld = w.size(1);
  const float* wp = w.data_ptr<float>();
  uint8_t* kp = reinterpret_cast<uint8_t*>(keep.data_ptr<bool>());
#pragma omp parallel for schedule(dynamic, 64)
  for (int64_t t = 0; t < tr * tc; ++t) {
    const int64_t r0 = (t / tc) * m, c0 = (t % tc) * m;
    TileView view{wp + r0 * ld + c0, kp + r0 * ld + c0, ld};
    f(view);
  }
  return keep;
}

}  // namespace

at::Tensor transposable_exact_cpu(const at::Tensor& w, int64_t n, int64_t m) {
  check_input(w, n, m, true, "transposable_exact");
  return for_each_tile(w, m, [&](const TileView& v) { tile_exact(v, (int)n, (int)m); });
}

at::Tensor transposable_greedy_cpu(const at::Tensor& w, int64_t n, int64_t m) {
  check_input(w, n, m, true, "transposable_greedy");
  return for_each_tile(w, m, [&](const TileView& v) { tile_greedy_repair(v, (int)n, (int)m); });
}

at::Tensor transposable_approx_cpu(const at::Tensor& w, int64_t n, int64_t m, int64_t max_passes) {
  check_input(w, n, m, true, "transposable_approx");
  return for_each_tile(w, m, [&](const TileView& v) { tile_approx(v, (int)n, (int)m, (int)max_passes); });
}

namespace {

// Enumeration over a batch of kLanes horizontally adjacent tiles at once: every loop over `lane` is
// a straight SIMD loop (same pattern index for all lanes), which is what makes 2:4 matmul-fast.
constexpr int kLanes = 16;

void enum_tile_row(const float* w, uint8_t* keep, int64_t ld, int64_t tiles_in_row, int n, int m,
                   const int32_t* combos, int nc, const int32_t* pats, int np) {
  float rs[kMaxEnumM * kMaxEnumCombos][kLanes];
  float best[kLanes], acc[kLanes];
  int arg[kLanes];
  for (int64_t t0 = 0; t0 < tiles_in_row; t0 += kLanes) {
    const int lanes = (int)std::min<int64_t>(kLanes, tiles_in_row - t0);
    for (int i = 0; i < m; ++i)
      for (int c = 0; c < nc; ++c) {
        float* out = rs[i * kMaxEnumCombos + c];
        for (int l = 0; l < kLanes; ++l) out[l] = 0.f;
        for (int q = 0; q < n; ++q) {
          const float* src = w + i * ld + t0 * m + combos[c * n + q];
          for (int l = 0; l < lanes; ++l) out[l] += std::fabs(src[l * m]);
        }
      }
    for (int l = 0; l < kLanes; ++l) { best[l] = -1.f; arg[l] = 0; }
    for (int p = 0; p < np; ++p) {
      const int32_t* pr = pats + p * m;
      for (int l = 0; l < kLanes; ++l) acc[l] = rs[pr[0]][l];
      for (int i = 1; i < m; ++i) {
        const float* r = rs[i * kMaxEnumCombos + pr[i]];
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

}  // namespace

at::Tensor transposable_enum_cpu(const at::Tensor& w, int64_t n, int64_t m, const at::Tensor& combos,
                                 const at::Tensor& patterns) {
  check_input(w, n, m, true, "transposable_enum");
  TORCH_CHECK(m <= kMaxEnumM, "transposable_enum: m must be <= ", kMaxEnumM, ", got ", m);
  TORCH_CHECK(combos.scalar_type() == at::kInt && patterns.scalar_type() == at::kInt,
              "transposable_enum: combos and patterns must be int32");
  TORCH_CHECK(combos.size(0) <= kMaxEnumCombos && combos.size(1) == n && patterns.size(1) == m,
              "transposable_enum: bad combos/patterns shapes");
  auto c = combos.contiguous().cpu();
  auto p = patterns.contiguous().cpu();
  const int32_t* cp = c.data_ptr<int32_t>();
  const int32_t* pp = p.data_ptr<int32_t>();
  const int nc = (int)c.size(0), np = (int)p.size(0);
  auto keep = at::empty(w.sizes(), w.options().dtype(at::kBool));
  const int64_t tr = w.size(0) / m, tc = w.size(1) / m, ld = w.size(1);
  const float* wp = w.data_ptr<float>();
  uint8_t* kp = reinterpret_cast<uint8_t*>(keep.data_ptr<bool>());
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < tr; ++r)
    enum_tile_row(wp + r * m * ld, kp + r * m * ld, ld, tc, (int)n, (int)m, cp, nc, pp, np);
  return keep;
}

at::Tensor nm_mask_cpu(const at::Tensor& w, int64_t n, int64_t m) {
  check_input(w, n, m, false, "nm_mask");
  auto keep = at::empty(w.sizes(), w.options().dtype(at::kBool));
  const int64_t groups = w.numel() / m;
  const float* wp = w.data_ptr<float>();
  uint8_t* kp = reinterpret_cast<uint8_t*>(keep.data_ptr<bool>());
  const int64_t batches = (groups + kLanes - 1) / kLanes;
  // kLanes groups at a time, values transposed so each comparison is one SIMD loop over lanes;
  // rank(a) = #{b : |w_b| > |w_a| or (|w_b| == |w_a| and b < a)}, kept iff rank < n (as group_nm).
#pragma omp parallel for schedule(static)
  for (int64_t bt = 0; bt < batches; ++bt) {
    const int64_t g0 = bt * kLanes;
    const int lanes = (int)std::min<int64_t>(kLanes, groups - g0);
    float v[kMaxM][kLanes];
    int rank[kLanes];
    for (int a = 0; a < m; ++a)
      for (int l = 0; l < kLanes; ++l) v[a][l] = l < lanes ? std::fabs(wp[(g0 + l) * m + a]) : 0.f;
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
  return keep;
}

}  // namespace sparse_ext
