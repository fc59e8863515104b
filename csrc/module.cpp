// Python bindings of sparse._C. Each entry dispatches on the input's device to the CPU (OpenMP) or
// CUDA launcher; the per-tile code is shared (include/sparse/*_tile.h).
#include <omp.h>

#include <torch/extension.h>

#include "sparse/bsr_cpu.h"
#include "sparse/dropout.h"
#include "sparse/launchers.h"
#include "sparse/sparse24_tile.h"

namespace sparse_ext {
namespace {

bool with_cuda() {
#ifdef SPARSE_WITH_CUDA
  return true;
#else
  return false;
#endif
}

void require_cpu_build(const at::Tensor& w, const char* fn) {
#ifndef SPARSE_WITH_CUDA
  TORCH_CHECK(!w.is_cuda(), fn, ": sparse._C was built without CUDA; rebuild with SPARSE_BUILD_CUDA=1");
#endif
}

#ifdef SPARSE_WITH_CUDA
#define SPARSE_DISPATCH(name, w, ...) \
  ((w).is_cuda() ? name##_cuda(w, __VA_ARGS__) : name##_cpu(w, __VA_ARGS__))
#else
#define SPARSE_DISPATCH(name, w, ...) name##_cpu(w, __VA_ARGS__)
#endif

at::Tensor transposable_exact(const at::Tensor& w, int64_t n, int64_t m) {
  require_cpu_build(w, "transposable_exact");
  return SPARSE_DISPATCH(transposable_exact, w, n, m);
}
at::Tensor transposable_greedy(const at::Tensor& w, int64_t n, int64_t m) {
  require_cpu_build(w, "transposable_greedy");
  return SPARSE_DISPATCH(transposable_greedy, w, n, m);
}
at::Tensor transposable_approx(const at::Tensor& w, int64_t n, int64_t m, int64_t max_passes) {
  require_cpu_build(w, "transposable_approx");
  return SPARSE_DISPATCH(transposable_approx, w, n, m, max_passes);
}
at::Tensor transposable_enum(const at::Tensor& w, int64_t n, int64_t m, const at::Tensor& combos,
                                const at::Tensor& patterns) {
  require_cpu_build(w, "transposable_enum");
  return SPARSE_DISPATCH(transposable_enum, w, n, m, combos, patterns);
}
at::Tensor nm_mask(const at::Tensor& w, int64_t n, int64_t m) {
  require_cpu_build(w, "nm_mask");
  return SPARSE_DISPATCH(nm_mask, w, n, m);
}

}  // namespace
}  // namespace sparse_ext

PYBIND11_MODULE(TORCH_EXTENSION_NAME, mod) {
  using namespace sparse_ext;
  mod.doc() = "sparse._C: C++/OpenMP (and CUDA when built) mask solvers and block-sparse CPU matmuls";
  mod.def("with_cuda", &with_cuda, "True if the CUDA launchers were compiled in");
  mod.def("num_threads", []() { return omp_get_max_threads(); }, "OpenMP threads");
  mod.def("transposable_exact", &transposable_exact, "exact transposable n:m mask (bool) of float32 W [R,C]",
          pybind11::arg("w"), pybind11::arg("n"), pybind11::arg("m"));
  mod.def("transposable_greedy", &transposable_greedy, "greedy 2-approximation + augmenting-path repair",
          pybind11::arg("w"), pybind11::arg("n"), pybind11::arg("m"));
  mod.def("transposable_approx", &transposable_approx, "greedy+repair+exchange transposable n:m mask",
          pybind11::arg("w"), pybind11::arg("n"), pybind11::arg("m"), pybind11::arg("max_passes") = 3);
  mod.def("transposable_enum", &transposable_enum, "exact transposable mask by pattern enumeration (m <= 6)",
          pybind11::arg("w"), pybind11::arg("n"), pybind11::arg("m"), pybind11::arg("combos"),
          pybind11::arg("patterns"));
  mod.def("nm_mask", &nm_mask, "1-D n:m mask along dim 1", pybind11::arg("w"), pybind11::arg("n"),
          pybind11::arg("m"));
  mod.def("bsr_brgemm_supported", [](const std::string& dtype, int64_t block) {
            if (dtype == "float32") return sparse_ext::bsr_brgemm_supported(at::kFloat, block);
            if (dtype == "bfloat16") return sparse_ext::bsr_brgemm_supported(at::kBFloat16, block);
            if (dtype == "float16") return sparse_ext::bsr_brgemm_supported(at::kHalf, block);
            return false;
          },
          "whether the native block-sparse CPU path runs dtype ('float32'|'bfloat16'|'float16') with blocks of "
          "`block` (0: some block size)",
          pybind11::arg("dtype"), pybind11::arg("block") = 0);
  mod.def("bsr_cpu_kernels", &bsr_cpu_kernels,
          "kernel families of the native block-sparse CPU path on this CPU ('amx', 'avx512bf16', 'brgemm'); "
          "SPARSE_BSR_ISA=<one of them> restricts the bf16 choice");
  mod.def("bsr_dds", &bsr_dds_cpu,
          "block-sparse out[T, J*B] = sum a[:, i-block] @ op(data[d]) (CPU: bf16 tile kernels or ATen brgemm)",
          pybind11::arg("a"), pybind11::arg("data"), pybind11::arg("seg"), pybind11::arg("idx"),
          pybind11::arg("dptr"), pybind11::arg("trans_w"), pybind11::arg("m_tile") = 64,
          pybind11::arg("bias") = pybind11::none());
  mod.def("bsr_sdd", &bsr_sdd_cpu, "kept blocks [nnz, B, B] of op(a) @ op(b) (CPU: bf16 tile kernels or ATen brgemm)",
          pybind11::arg("a"), pybind11::arg("b"), pybind11::arg("crow"), pybind11::arg("col"),
          pybind11::arg("ccol"), pybind11::arg("row_t"), pybind11::arg("perm_t"), pybind11::arg("block"),
          pybind11::arg("trans_a"), pybind11::arg("trans_b"), pybind11::arg("k_tile") = 256,
          pybind11::arg("colsum") = pybind11::none());
  register_dropout(mod);  // dropout_forward, dropout_backward, dropout_isa (csrc/cpu/dropout_cpu.cpp)
  register_sparse24(mod);  // sparse24_compress, _mask, _decompress, _mvue (csrc/cpu/sparse24_cpu.cpp)
}
