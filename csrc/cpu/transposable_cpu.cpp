// C++/OpenMP launchers for the per-tile mask solvers (one OpenMP iteration per tile or group).
#include <omp.h>

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
  auto keep = at::empty(w.sizes(), w.options().dtype(at::kByte));
  const int64_t tr = w.size(0) / m, tc = w.size(1) / m, ld = w.size(1);
  const float* wp = w.data_ptr<float>();
  uint8_t* kp = keep.data_ptr<uint8_t>();
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

at::Tensor transposable_approx_cpu(const at::Tensor& w, int64_t n, int64_t m, int64_t max_passes) {
  check_input(w, n, m, true, "transposable_approx");
  return for_each_tile(w, m, [&](const TileView& v) { tile_approx(v, (int)n, (int)m, (int)max_passes); });
}

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
  return for_each_tile(w, m, [&](const TileView& v) { tile_enum(v, (int)n, (int)m, cp, nc, pp, np); });
}

at::Tensor nm_mask_cpu(const at::Tensor& w, int64_t n, int64_t m) {
  check_input(w, n, m, false, "nm_mask");
  auto keep = at::empty(w.sizes(), w.options().dtype(at::kByte));
  const int64_t groups = w.numel() / m;
  const float* wp = w.data_ptr<float>();
  uint8_t* kp = keep.data_ptr<uint8_t>();
#pragma omp parallel for schedule(static)
  for (int64_t g = 0; g < groups; ++g) group_nm(wp + g * m, kp + g * m, (int)n, (int)m);
  return keep;
}

}  // namespace sparse_ext
