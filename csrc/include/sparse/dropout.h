// Counter-based dropout (csrc/cpu/dropout_cpu.cpp). The keep bit of element i is a pure function of
// (seed, offset, i): Philox4x32-10 (Salmon et al., SC'11, the generator of curand and of torch's CUDA
// dropout) keyed by the 64-bit seed, so a result does not depend on the thread count or on the ISA path
// that ran, and a second call with another (seed, offset) is independent of the first.
//
// Element i (row-major over the logical shape) = 64 * b + 16 * w + l (block b, word w < 4, lane l < 16)
// takes 32-bit word w of Philox(counter = (16 * b + l as 64 bits, offset as 64 bits), key = seed) and is
// kept iff that word < threshold (P(keep) = threshold / 2^32, within 2^-33 of 1 - p). Sixteen lanes are
// one zmm register: a block of 64 elements is four compares against the four output words, no shuffles.
// The keep bits are stored as a bit mask (bit j of byte k = element 8k + j, 8 bytes per block of 64) for
// the backward: 1/32 of an fp32 activation, where torch's CPU dropout keeps a full-size mask.
#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <tuple>

#include "sparse/common.h"

namespace pybind11 {
class module_;
}

namespace sparse_ext {
namespace dropout {

constexpr int64_t kBlock = 64;
constexpr uint32_t kPhiloxM0 = 0xD2511F53u, kPhiloxM1 = 0xCD9E8D57u;
constexpr uint32_t kPhiloxW0 = 0x9E3779B9u, kPhiloxW1 = 0xBB67AE85u;

// Philox4x32-10 on c (in place), key (k0, k1); the reference the vector paths must reproduce bit for bit.
SPARSE_HD void philox4x32_10(uint32_t c[4], uint32_t k0, uint32_t k1) {
  for (int r = 0; r < 10; ++r) {
    const uint64_t p0 = static_cast<uint64_t>(kPhiloxM0) * c[0];
    const uint64_t p1 = static_cast<uint64_t>(kPhiloxM1) * c[2];
    const uint32_t n0 = static_cast<uint32_t>(p1 >> 32) ^ c[1] ^ k0;
    const uint32_t n2 = static_cast<uint32_t>(p0 >> 32) ^ c[3] ^ k1;
    c[0] = n0;
    c[1] = static_cast<uint32_t>(p1);
    c[2] = n2;
    c[3] = static_cast<uint32_t>(p0);
    k0 += kPhiloxW0;
    k1 += kPhiloxW1;
  }
}

// Keep iff word < keep_threshold(p), for 0 <= p < 1. Rounded to nearest: the kept probability is the
// closest multiple of 2^-32 to 1 - p (clamped below 1, so p < 2^-33 keeps with 1 - 2^-32).
inline uint32_t keep_threshold(double p) {
  const double t = std::nearbyint((1.0 - p) * 4294967296.0);
  return t >= 4294967295.0 ? 0xFFFFFFFFu : static_cast<uint32_t>(t);
}

}  // namespace dropout

// out = x * keep * s and the keep bits, s = 1 / (1 - p) (rounded to fp32; to fp64 for fp64 inputs), each
// product rounded once to x's dtype. x: CPU float32/float64/bfloat16/float16, any strides (read in
// row-major order); 0 <= p < 1; seed_offset: int64 CPU tensor [2] = (seed, offset). Returns
// (out contiguous with x's shape, mask uint8 [8 * ceil(numel / 64)]).
std::tuple<at::Tensor, at::Tensor> dropout_forward_cpu(const at::Tensor& x, double p, const at::Tensor& seed_offset);
// grad * keep * s with the bits of dropout_forward_cpu (same p, same numel).
at::Tensor dropout_backward_cpu(const at::Tensor& grad, const at::Tensor& mask, double p);
// "avx512" or "scalar": the path the next call takes (SPARSE_DROPOUT_ISA=scalar forces the portable one).
std::string dropout_cpu_isa();
// Adds dropout_forward, dropout_backward, dropout_isa to the extension module (called by csrc/module.cpp).
void register_dropout(pybind11::module_& mod);

}  // namespace sparse_ext
