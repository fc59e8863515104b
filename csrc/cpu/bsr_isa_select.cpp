// Which native block-sparse kernel family runs: CPU feature detection (including Linux's AMX
// permission), SPARSE_BSR_ISA, and what the Python dispatcher is told (bsr_brgemm_supported,
// bsr_cpu_kernels).
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <ATen/ATen.h>
#include <ATen/native/CPUBlas.h>

#include <cstdlib>
#include <string>
#include <vector>

#include "sparse/bsr_cpu.h"
#include "sparse/bsr_isa.h"

namespace sparse_ext {
namespace bsr {

bool amx_usable() {
  static const bool ok = [] {
    unsigned a = 0, b = 0, c = 0, d = 0;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
    const bool tile = (d >> 24) & 1, bf16 = (d >> 22) & 1;
    if (!tile || !bf16) return false;
    // Linux hands out the AMX register state only on request (once per process, for all threads).
    constexpr long kGetPerm = 0x1022, kReqPerm = 0x1023, kXtileData = 18;
    unsigned long perm = 0;
    if (syscall(SYS_arch_prctl, kGetPerm, &perm) != 0) return false;
    if (!(perm & (1ul << kXtileData)) && syscall(SYS_arch_prctl, kReqPerm, kXtileData) != 0) return false;
    return syscall(SYS_arch_prctl, kGetPerm, &perm) == 0 && (perm & (1ul << kXtileData));
  }();
  return ok;
}

bool avx512bf16_usable() {
  static const bool ok = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                         __builtin_cpu_supports("avx512bf16");
  return ok;
}

TileIsa tile_isa(at::ScalarType dtype, int64_t bs) {
  if (dtype != at::kBFloat16 || bs % 32 != 0) return TileIsa::kNone;
  const char* env = std::getenv("SPARSE_BSR_ISA");
  const std::string want = env ? env : "";
  if ((want.empty() || want == "amx") && amx_usable()) return TileIsa::kAmx;
  if ((want.empty() || want == "avx512bf16") && avx512bf16_usable()) return TileIsa::kAvx512Bf16;
  return TileIsa::kNone;
}

}  // namespace bsr

bool bsr_brgemm_supported(at::ScalarType dtype, int64_t block) {
  if (dtype == at::kFloat) return true;
  if (dtype != at::kBFloat16 && dtype != at::kHalf) return false;
  if (block > 0 && bsr::tile_isa(dtype, block) != bsr::TileIsa::kNone) return true;
  return at::native::cpublas::could_pack(dtype);
}

std::vector<std::string> bsr_cpu_kernels() {
  std::vector<std::string> out;
  if (bsr::amx_usable()) out.push_back("amx");
  if (bsr::avx512bf16_usable()) out.push_back("avx512bf16");
  out.push_back("brgemm");
  return out;
}

}  // namespace sparse_ext
