// CPU launchers of the 2:4 kernels (per-group / per-tile / per-word code in include/sparse/sparse24_tile.h, the
// code the CUDA kernels run) and their device-dispatching Python bindings. Threads: at::parallel_for over rows of
// metadata words / tiles (torch's pool); every work item writes its own outputs, so results do not depend on the
// thread count.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/extension.h>

#include <vector>

#include "sparse/sparse24_launch.h"
#include "sparse/sparse24_tile.h"

namespace sparse_ext {
namespace {

void check_float(const at::Tensor& t, const char* fn, const char* arg) { check_float_matrix(t, fn, arg); }

void check_compress_shape(const at::Tensor& w, bool transposable, const char* fn) {
  const int64_t R = w.size(0), C = w.size(1);
  (void)transposable;  // W^T [C, R] needs the same: both sides % 32
  TORCH_CHECK(R % 32 == 0 && C % 32 == 0, fn, ": the CUTLASS metadata layout needs rows % 32 == 0 and cols % 32 == 0, got ",
              w.sizes());
}

// Tile masks of the exact transposable 2:4 solution: uint16 [R/4, C/4], bit 4*i + j = element (i, j) of a tile.
std::vector<uint16_t> tile_masks(const at::Tensor& w) {
  const int64_t R = w.size(0), C = w.size(1), TR = R / 4, TC = C / 4;
  std::vector<uint16_t> tb(static_cast<size_t>(TR * TC));
  SPARSE_S24_DISPATCH(w.scalar_type(), [&] {
    const T* p = w.data_ptr<T>();
    at::parallel_for(0, TR, 16, [&](int64_t b, int64_t e) {
      for (int64_t tr = b; tr < e; ++tr)
        for (int64_t tc = 0; tc < TC; ++tc)
          tb[tr * TC + tc] = static_cast<uint16_t>(s24::exact_tile_bits(p + tr * 4 * C + tc * 4, C));
    });
  });
  return tb;
}

}  // namespace

std::vector<at::Tensor> sparse24_compress_cpu(const at::Tensor& w, bool transposable) {
  const char* fn = "sparse24_compress";
  check_float(w, fn, "w");
  TORCH_CHECK(w.device().is_cpu(), fn, ": expected a CPU tensor, got ", w.device());
  check_compress_shape(w, transposable, fn);
  const int64_t R = w.size(0), C = w.size(1), W16 = C / 16;
  auto values = at::empty({R, C / 2}, w.options());
  auto meta = at::empty({R, W16}, w.options().dtype(at::kShort));
  std::vector<uint16_t> tb;
  if (transposable) tb = tile_masks(w);
  const int64_t TC = C / 4;
  SPARSE_S24_DISPATCH(w.scalar_type(), [&] {
    const T* p = w.data_ptr<T>();
    T* v = values.data_ptr<T>();
    auto* mt = reinterpret_cast<uint16_t*>(meta.data_ptr<int16_t>());
    at::parallel_for(0, R, 16, [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r)
        for (int64_t c = 0; c < W16; ++c) {
          const T* seg = p + r * C + 16 * c;
          uint32_t keep = 0;
          for (int q = 0; q < 4; ++q) {
            const uint32_t bits = transposable ? (tb[(r / 4) * TC + 4 * c + q] >> (4 * (r % 4))) & 0xFu
                                               : s24::top2_bits(seg + 4 * q);
            keep |= bits << (4 * q);
          }
          mt[s24::cutlass_meta_offset(r, c, R)] = s24::pack_word(seg, keep, v + r * (C / 2) + 8 * c);
        }
    });
  });
  if (!transposable) return {values, meta};
  const int64_t WT16 = R / 16;
  auto values_t = at::empty({C, R / 2}, w.options());
  auto meta_t = at::empty({C, WT16}, w.options().dtype(at::kShort));
  SPARSE_S24_DISPATCH(w.scalar_type(), [&] {
    const T* p = w.data_ptr<T>();
    T* v = values_t.data_ptr<T>();
    auto* mt = reinterpret_cast<uint16_t*>(meta_t.data_ptr<int16_t>());
    at::parallel_for(0, C, 16, [&](int64_t b, int64_t e) {
      for (int64_t j = b; j < e; ++j)
        for (int64_t c = 0; c < WT16; ++c) {
          T col[16];
          uint32_t t4[4];
          for (int k = 0; k < 16; ++k) col[k] = p[(16 * c + k) * C + j];
          for (int t = 0; t < 4; ++t) t4[t] = tb[(4 * c + t) * TC + j / 4];
          const uint32_t keep = s24::column_keep16(t4, static_cast<int>(j % 4));
          mt[s24::cutlass_meta_offset(j, c, C)] = s24::pack_word(col, keep, v + j * (R / 2) + 8 * c);
        }
    });
  });
  return {values, meta, values_t, meta_t};
}

at::Tensor sparse24_mask_cpu(const at::Tensor& w, bool transposable) {
  const char* fn = "sparse24_mask";
  check_float(w, fn, "w");
  TORCH_CHECK(w.device().is_cpu(), fn, ": expected a CPU tensor, got ", w.device());
  const int64_t R = w.size(0), C = w.size(1);
  TORCH_CHECK(C % 4 == 0 && (!transposable || R % 4 == 0), fn, ": expected cols", transposable ? " and rows" : "",
              " divisible by 4, got ", w.sizes());
  auto keep = at::empty({R, C}, w.options().dtype(at::kBool));
  auto* k8 = reinterpret_cast<uint8_t*>(keep.data_ptr<bool>());
  if (transposable) {
    const auto tb = tile_masks(w);
    const int64_t TC = C / 4;
    at::parallel_for(0, R, 64, [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r)
        for (int64_t c = 0; c < C; ++c) k8[r * C + c] = (tb[(r / 4) * TC + c / 4] >> (4 * (r % 4) + c % 4)) & 1u;
    });
    return keep;
  }
  SPARSE_S24_DISPATCH(w.scalar_type(), [&] {
    const T* p = w.data_ptr<T>();
    at::parallel_for(0, R, 64, [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r)
        for (int64_t g = 0; g < C / 4; ++g) {
          const uint32_t bits = s24::top2_bits(p + r * C + 4 * g);
          for (int k = 0; k < 4; ++k) k8[r * C + 4 * g + k] = (bits >> k) & 1u;
        }
    });
  });
  return keep;
}

at::Tensor sparse24_decompress_cpu(const at::Tensor& values, const at::Tensor& meta) {
  const char* fn = "sparse24_decompress";
  check_float(values, fn, "values");
  TORCH_CHECK(values.device().is_cpu() && meta.device().is_cpu(), fn, ": expected CPU tensors");
  TORCH_CHECK(meta.scalar_type() == at::kShort && meta.dim() == 2 && meta.is_contiguous(), fn,
              ": meta: expected a contiguous 2-D int16 tensor, got ", meta.scalar_type(), " ", meta.sizes());
  const int64_t R = values.size(0), C = 2 * values.size(1), W16 = C / 16;
  TORCH_CHECK(R % 32 == 0 && C % 32 == 0 && meta.size(0) == R && meta.size(1) == W16, fn,
              ": expected values [R, C/2] and meta [R, C/16] with R % 32 == 0, C % 32 == 0, got values ",
              values.sizes(), " meta ", meta.sizes());
  auto dense = at::empty({R, C}, values.options());
  SPARSE_S24_DISPATCH(values.scalar_type(), [&] {
    const T* v = values.data_ptr<T>();
    const auto* mt = reinterpret_cast<const uint16_t*>(meta.data_ptr<int16_t>());
    T* d = dense.data_ptr<T>();
    at::parallel_for(0, R, 16, [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r)
        for (int64_t c = 0; c < W16; ++c)
          s24::unpack_word(v + r * (C / 2) + 8 * c, mt[s24::cutlass_meta_offset(r, c, R)], d + r * C + 16 * c);
    });
  });
  return dense;
}

at::Tensor sparse24_mvue_cpu(const at::Tensor& g, const at::Tensor& seed_offset, int64_t m) {
  const char* fn = "sparse24_mvue";
  check_float(g, fn, "g");
  TORCH_CHECK(g.device().is_cpu(), fn, ": expected a CPU tensor, got ", g.device());
  const MvueSeed so = check_mvue_args(g, seed_offset, m, fn);
  const uint64_t seed = so.seed, off = so.offset;
  const uint32_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32), o0 = (uint32_t)off, o1 = (uint32_t)(off >> 32);
  auto out = at::empty_like(g);
  const int64_t groups = g.numel() / m;
  SPARSE_S24_DISPATCH(g.scalar_type(), [&] {
    const T* in = g.data_ptr<T>();
    T* o = out.data_ptr<T>();
    at::parallel_for(0, groups, 1024, [&](int64_t b, int64_t e) {
      for (int64_t q = b; q < e; ++q) {
        const float u = s24::group_uniform(static_cast<uint64_t>(q), k0, k1, o0, o1);
        if (m == 2) s24::mvue_pair(in + 2 * q, o + 2 * q, u);
        else s24::mvue_group4(in + 4 * q, o + 4 * q, u);
      }
    });
  });
  return out;
}

namespace {

void require_cuda_build(const at::Tensor& t, const char* fn) {
#ifndef SPARSE_WITH_CUDA
  TORCH_CHECK(!t.is_cuda(), fn, ": sparse._C was built without CUDA; rebuild with SPARSE_BUILD_CUDA=1");
#endif
}

std::vector<at::Tensor> compress(const at::Tensor& w, bool transposable) {
  require_cuda_build(w, "sparse24_compress");
#ifdef SPARSE_WITH_CUDA
  if (w.is_cuda()) return sparse24_compress_cuda(w, transposable);
#endif
  return sparse24_compress_cpu(w, transposable);
}
at::Tensor mask(const at::Tensor& w, bool transposable) {
  require_cuda_build(w, "sparse24_mask");
#ifdef SPARSE_WITH_CUDA
  if (w.is_cuda()) return sparse24_mask_cuda(w, transposable);
#endif
  return sparse24_mask_cpu(w, transposable);
}
at::Tensor decompress(const at::Tensor& values, const at::Tensor& meta) {
  require_cuda_build(values, "sparse24_decompress");
#ifdef SPARSE_WITH_CUDA
  if (values.is_cuda()) return sparse24_decompress_cuda(values, meta);
#endif
  return sparse24_decompress_cpu(values, meta);
}
at::Tensor mvue(const at::Tensor& g, const at::Tensor& seed_offset, int64_t m) {
  require_cuda_build(g, "sparse24_mvue");
#ifdef SPARSE_WITH_CUDA
  if (g.is_cuda()) return sparse24_mvue_cuda(g, seed_offset, m);
#endif
  return sparse24_mvue_cpu(g, seed_offset, m);
}

}  // namespace

void register_sparse24(pybind11::module_& mod) {
  namespace py = pybind11;
  mod.def("sparse24_compress", &compress,
          "2:4 prune + compress of W [R, C] (fp32/fp16/bf16) into CUTLASS layout: [values [R, C/2], meta int16 "
          "[R, C/16]] (+ [values_t [C, R/2], meta_t [C, R/16]] of the exact transposable mask)",
          py::arg("w"), py::arg("transposable") = false);
  mod.def("sparse24_mask", &mask, "the 2:4 mask (bool [R, C]) sparse24_compress keeps", py::arg("w"),
          py::arg("transposable") = false);
  mod.def("sparse24_decompress", &decompress, "dense [R, 2*values.size(1)] from CUTLASS-layout values + meta",
          py::arg("values"), py::arg("meta"));
  mod.def("sparse24_mvue", &mvue,
          "MVUE 1:2 (m=2) or 2:4 (m=4) sparsification along dim 1, Philox draws from seed_offset int64 [2]",
          py::arg("g"), py::arg("seed_offset"), py::arg("m") = 4);
}

}  // namespace sparse_ext
