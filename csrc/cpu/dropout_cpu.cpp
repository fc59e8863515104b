// CPU dropout: Philox4x32-10 keep bits fused with the scaling, and the backward from the stored bit mask
// (the element -> random-word mapping is in include/sparse/dropout.h). Two paths with identical results:
// AVX-512F (sixteen Philox streams per zmm, two blocks interleaved so the multiplier latency is hidden),
// chosen at run time on x86, and a portable scalar one (the only one compiled elsewhere). Threads:
// at::parallel_for over blocks of 64 elements (torch's pool, honours torch.set_num_threads); a block's bits
// depend only on its index, so the split does not change the result.
//
// Semantics follow torch's CPU dropout (input * (bernoulli(1-p) / (1-p))): a dropped element is x * 0
// (so NaN/Inf stay NaN and -x gives -0), a kept one x * s. The difference: torch rounds s to the input
// dtype first (bf16 s = 1.109375 for p = 0.1), here s is fp32 and the product is rounded once.
#if defined(__x86_64__) || defined(__i386__)
#define SPARSE_DROPOUT_X86 1
#include <immintrin.h>
#endif

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/extension.h>

#include <cstdlib>
#include <cstring>
#include <string>
#include <type_traits>

#include "sparse/dropout.h"

namespace sparse_ext {
namespace {

using dropout::kBlock;

// Blocks per parallel chunk: 512 x 64 elements (128 KB of fp32) is ~20 us of work on one core, far
// above the cost of handing a chunk to a thread.
constexpr int64_t kGrainBlocks = 512;

struct Params {
  uint32_t k0, k1, off_lo, off_hi, thr;
  float scale;
  double scale_d;
};

Params make_params(double p, int64_t seed, int64_t offset) {
  const auto s = static_cast<uint64_t>(seed), o = static_cast<uint64_t>(offset);
  return Params{static_cast<uint32_t>(s), static_cast<uint32_t>(s >> 32), static_cast<uint32_t>(o),
                static_cast<uint32_t>(o >> 32), dropout::keep_threshold(p), static_cast<float>(1.0 / (1.0 - p)),
                1.0 / (1.0 - p)};
}

// Bits of the first `count` elements of a block (bits above `count` cleared).
inline uint64_t valid_bits(int64_t count) { return count >= 64 ? ~0ull : ((1ull << count) - 1); }

// ----------------------------------------------------------------------------------------- scalar path
uint64_t block_bits_scalar(const Params& P, int64_t b) {
  uint64_t bits = 0;
  const uint64_t base = static_cast<uint64_t>(b) * 16;
  for (int l = 0; l < 16; ++l) {
    const uint64_t ctr = base + l;
    uint32_t c[4] = {static_cast<uint32_t>(ctr), static_cast<uint32_t>(ctr >> 32), P.off_lo, P.off_hi};
    dropout::philox4x32_10(c, P.k0, P.k1);
    for (int w = 0; w < 4; ++w) bits |= static_cast<uint64_t>(c[w] < P.thr) << (16 * w + l);
  }
  return bits;
}

template <typename T>
void apply_scalar(const T* in, T* out, uint64_t bits, int64_t count, const Params& P) {
  for (int64_t j = 0; j < count; ++j) {
    const bool keep = (bits >> j) & 1;
    if constexpr (std::is_same_v<T, double>) {
      out[j] = in[j] * (keep ? P.scale_d : 0.0);
    } else if constexpr (std::is_same_v<T, float>) {
      out[j] = in[j] * (keep ? P.scale : 0.0f);
    } else {
      out[j] = static_cast<T>(static_cast<float>(in[j]) * (keep ? P.scale : 0.0f));
    }
  }
}

// ----------------------------------------------------------------------------------------- AVX-512 path
#ifdef SPARSE_DROPOUT_X86
#define SPARSE_TARGET_DROPOUT __attribute__((target("avx512f")))

SPARSE_TARGET_DROPOUT inline void mulhilo(__m512i a, __m512i m, __m512i& hi, __m512i& lo) {
  // vpmuludq multiplies the even 32-bit lanes into 64-bit products; the odd lanes go through a shift.
  const __m512i pe = _mm512_mul_epu32(a, m);
  const __m512i po = _mm512_mul_epu32(_mm512_srli_epi64(a, 32), m);
  hi = _mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64(pe, 32), po);
  lo = _mm512_mask_blend_epi32(0xAAAA, pe, _mm512_slli_epi64(po, 32));
}

// Keep bits of blocks b .. b + NB - 1 into bits[0 .. NB).
template <int NB>
SPARSE_TARGET_DROPOUT inline void block_bits_avx512(const Params& P, int64_t b, uint64_t* bits) {
  const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512i m0 = _mm512_set1_epi32(static_cast<int>(dropout::kPhiloxM0));
  const __m512i m1 = _mm512_set1_epi32(static_cast<int>(dropout::kPhiloxM1));
  const __m512i w0 = _mm512_set1_epi32(static_cast<int>(dropout::kPhiloxW0));
  const __m512i w1 = _mm512_set1_epi32(static_cast<int>(dropout::kPhiloxW1));
  __m512i c0[NB], c1[NB], c2[NB], c3[NB];
  for (int n = 0; n < NB; ++n) {
    // 16 * b is a multiple of 16, so adding a lane index never carries into the high word.
    const uint64_t base = static_cast<uint64_t>(b + n) * 16;
    c0[n] = _mm512_add_epi32(_mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(base))), iota);
    c1[n] = _mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(base >> 32)));
    c2[n] = _mm512_set1_epi32(static_cast<int>(P.off_lo));
    c3[n] = _mm512_set1_epi32(static_cast<int>(P.off_hi));
  }
  __m512i k0 = _mm512_set1_epi32(static_cast<int>(P.k0)), k1 = _mm512_set1_epi32(static_cast<int>(P.k1));
#pragma GCC unroll 10
  for (int r = 0; r < 10; ++r) {
#pragma GCC unroll 4
    for (int n = 0; n < NB; ++n) {
      __m512i hi0, lo0, hi1, lo1;
      mulhilo(c0[n], m0, hi0, lo0);
      mulhilo(c2[n], m1, hi1, lo1);
      c0[n] = _mm512_ternarylogic_epi32(hi1, c1[n], k0, 0x96);  // three-way xor
      c2[n] = _mm512_ternarylogic_epi32(hi0, c3[n], k1, 0x96);
      c1[n] = lo1;
      c3[n] = lo0;
    }
    k0 = _mm512_add_epi32(k0, w0);
    k1 = _mm512_add_epi32(k1, w1);
  }
  const __m512i thr = _mm512_set1_epi32(static_cast<int>(P.thr));
  for (int n = 0; n < NB; ++n) {
    bits[n] = static_cast<uint64_t>(_mm512_cmplt_epu32_mask(c0[n], thr)) |
              static_cast<uint64_t>(_mm512_cmplt_epu32_mask(c1[n], thr)) << 16 |
              static_cast<uint64_t>(_mm512_cmplt_epu32_mask(c2[n], thr)) << 32 |
              static_cast<uint64_t>(_mm512_cmplt_epu32_mask(c3[n], thr)) << 48;
  }
}

// bf16 <- fp32 rounded to nearest even, NaN -> 0x7FC0 (c10::BFloat16's conversion), as 16 int32 lanes.
SPARSE_TARGET_DROPOUT inline __m512i f32_to_bf16_bits(__m512 y) {
  const __m512i u = _mm512_castps_si512(y);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  __m512i r = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7FFF))), 16);
  const __mmask16 nan = _mm512_cmp_ps_mask(y, y, _CMP_UNORD_Q);
  return _mm512_mask_mov_epi32(r, nan, _mm512_set1_epi32(0x7FC0));
}

// out[0..64) = in * (bit ? s : 0) for one full block.
template <typename T>
SPARSE_TARGET_DROPOUT inline void apply_avx512(const T* in, T* out, uint64_t bits, const Params& P) {
  for (int w = 0; w < 4; ++w) {
    const auto k = static_cast<__mmask16>(bits >> (16 * w));
    const T* src = in + 16 * w;
    T* dst = out + 16 * w;
    if constexpr (std::is_same_v<T, double>) {
      const __m512d s = _mm512_set1_pd(P.scale_d);
      const auto klo = static_cast<__mmask8>(k), khi = static_cast<__mmask8>(k >> 8);
      _mm512_storeu_pd(dst, _mm512_mul_pd(_mm512_loadu_pd(src), _mm512_maskz_mov_pd(klo, s)));
      _mm512_storeu_pd(dst + 8, _mm512_mul_pd(_mm512_loadu_pd(src + 8), _mm512_maskz_mov_pd(khi, s)));
    } else {
      const __m512 s = _mm512_maskz_mov_ps(k, _mm512_set1_ps(P.scale));
      if constexpr (std::is_same_v<T, float>) {
        _mm512_storeu_ps(dst, _mm512_mul_ps(_mm512_loadu_ps(src), s));
      } else if constexpr (std::is_same_v<T, c10::BFloat16>) {
        const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src));
        const __m512 xf = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(v), 16));
        const __m256i o = _mm512_cvtepi32_epi16(f32_to_bf16_bits(_mm512_mul_ps(xf, s)));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst), o);
      } else {  // c10::Half: F16C conversions in AVX-512F, round to nearest even
        const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src));
        const __m256i o = _mm512_cvtps_ph(_mm512_mul_ps(_mm512_cvtph_ps(v), s), _MM_FROUND_TO_NEAREST_INT);
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst), o);
      }
    }
  }
}

// A partial last block goes through a zero-padded copy so the vector code needs no tail loop.
template <typename T>
SPARSE_TARGET_DROPOUT inline void apply_avx512_tail(const T* in, T* out, uint64_t bits, int64_t count,
                                                    const Params& P) {
  alignas(64) T src[kBlock], dst[kBlock];
  std::memset(static_cast<void*>(src), 0, sizeof(src));
  std::memcpy(static_cast<void*>(src), in, count * sizeof(T));
  apply_avx512(src, dst, bits, P);
  std::memcpy(static_cast<void*>(out), dst, count * sizeof(T));
}

template <typename T>
SPARSE_TARGET_DROPOUT void forward_avx512(const T* x, T* out, uint64_t* mask, int64_t n, int64_t b0, int64_t b1,
                                          const Params& P) {
  int64_t b = b0;
  for (; b + 2 <= b1; b += 2) {
    uint64_t bits[2];
    block_bits_avx512<2>(P, b, bits);
    for (int q = 0; q < 2; ++q) {
      const int64_t i = (b + q) * kBlock, count = std::min<int64_t>(kBlock, n - i);
      bits[q] &= valid_bits(count);
      mask[b + q] = bits[q];
      if (count == kBlock)
        apply_avx512(x + i, out + i, bits[q], P);
      else
        apply_avx512_tail(x + i, out + i, bits[q], count, P);
    }
  }
  for (; b < b1; ++b) {
    uint64_t bits[1];
    block_bits_avx512<1>(P, b, bits);
    const int64_t i = b * kBlock, count = std::min<int64_t>(kBlock, n - i);
    bits[0] &= valid_bits(count);
    mask[b] = bits[0];
    if (count == kBlock)
      apply_avx512(x + i, out + i, bits[0], P);
    else
      apply_avx512_tail(x + i, out + i, bits[0], count, P);
  }
}

template <typename T>
SPARSE_TARGET_DROPOUT void backward_avx512(const T* g, T* out, const uint64_t* mask, int64_t n, int64_t b0,
                                           int64_t b1, const Params& P) {
  for (int64_t b = b0; b < b1; ++b) {
    const int64_t i = b * kBlock, count = std::min<int64_t>(kBlock, n - i);
    if (count == kBlock)
      apply_avx512(g + i, out + i, mask[b], P);
    else
      apply_avx512_tail(g + i, out + i, mask[b], count, P);
  }
}

#endif  // SPARSE_DROPOUT_X86

template <typename T>
void forward_scalar(const T* x, T* out, uint64_t* mask, int64_t n, int64_t b0, int64_t b1, const Params& P) {
  for (int64_t b = b0; b < b1; ++b) {
    const int64_t i = b * kBlock, count = std::min<int64_t>(kBlock, n - i);
    const uint64_t bits = block_bits_scalar(P, b) & valid_bits(count);
    mask[b] = bits;
    apply_scalar(x + i, out + i, bits, count, P);
  }
}

template <typename T>
void backward_scalar(const T* g, T* out, const uint64_t* mask, int64_t n, int64_t b0, int64_t b1,
                     const Params& P) {
  for (int64_t b = b0; b < b1; ++b) {
    const int64_t i = b * kBlock, count = std::min<int64_t>(kBlock, n - i);
    apply_scalar(g + i, out + i, mask[b], count, P);
  }
}

bool avx512_usable() {
#ifdef SPARSE_DROPOUT_X86
  static const bool ok = __builtin_cpu_supports("avx512f");
#else
  constexpr bool ok = false;
#endif
  const char* env = std::getenv("SPARSE_DROPOUT_ISA");
  return ok && !(env && std::string(env) == "scalar");
}

void check_dtype(const at::Tensor& t, const char* name) {
  const auto dt = t.scalar_type();
  TORCH_CHECK_VALUE(dt == at::kFloat || dt == at::kDouble || dt == at::kBFloat16 || dt == at::kHalf, name,
                    ": expected float32, float64, bfloat16 or float16, got ", dt);
  TORCH_CHECK_VALUE(t.device().is_cpu(), name, ": expected a CPU tensor, got one on ", t.device());
}

void check_p(double p) {
  TORCH_CHECK_VALUE(p >= 0.0 && p < 1.0, "p: expected 0 <= p < 1 for the kernel, got ", p);
}

}  // namespace

std::string dropout_cpu_isa() { return avx512_usable() ? "avx512" : "scalar"; }

std::tuple<at::Tensor, at::Tensor> dropout_forward_cpu(const at::Tensor& x, double p, const at::Tensor& seed_offset) {
  check_dtype(x, "x");
  check_p(p);
  TORCH_CHECK_VALUE(seed_offset.device().is_cpu() && seed_offset.scalar_type() == at::kLong &&
                        seed_offset.numel() == 2,
                    "seed_offset: expected an int64 CPU tensor of 2 elements (seed, offset)");
  const auto so = seed_offset.contiguous();
  const Params P = make_params(p, so.data_ptr<int64_t>()[0], so.data_ptr<int64_t>()[1]);
  const at::Tensor xc = x.contiguous();
  const int64_t n = xc.numel(), nblocks = (n + kBlock - 1) / kBlock;
  at::Tensor out = at::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::Contiguous));
  at::Tensor mask = at::empty({nblocks * 8}, x.options().dtype(at::kByte));
  if (n == 0) return {out, mask};
  auto* mbits = reinterpret_cast<uint64_t*>(mask.data_ptr<uint8_t>());
  [[maybe_unused]] const bool vec = avx512_usable();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, xc.scalar_type(), "sparse_dropout_forward", [&] {
    const scalar_t* xp = xc.const_data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    at::parallel_for(0, nblocks, kGrainBlocks, [&](int64_t b0, int64_t b1) {
#ifdef SPARSE_DROPOUT_X86
      if (vec) return forward_avx512(xp, op, mbits, n, b0, b1, P);
#endif
      forward_scalar(xp, op, mbits, n, b0, b1, P);
    });
  });
  return {out, mask};
}

at::Tensor dropout_backward_cpu(const at::Tensor& grad, const at::Tensor& mask, double p) {
  check_dtype(grad, "grad");
  check_p(p);
  const at::Tensor gc = grad.contiguous();
  const int64_t n = gc.numel(), nblocks = (n + kBlock - 1) / kBlock;
  TORCH_CHECK_VALUE(mask.device().is_cpu() && mask.scalar_type() == at::kByte && mask.is_contiguous() &&
                        mask.numel() == nblocks * 8,
                    "mask: expected the contiguous uint8 CPU bit mask of dropout_forward for ", n, " elements (",
                    nblocks * 8, " bytes), got ", mask.scalar_type(), " [", mask.numel(), "]");
  const Params P = make_params(p, 0, 0);
  at::Tensor out = at::empty(grad.sizes(), grad.options().memory_format(at::MemoryFormat::Contiguous));
  if (n == 0) return out;
  const auto* mbits = reinterpret_cast<const uint64_t*>(mask.const_data_ptr<uint8_t>());
  [[maybe_unused]] const bool vec = avx512_usable();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, gc.scalar_type(), "sparse_dropout_backward", [&] {
    const scalar_t* gp = gc.const_data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    at::parallel_for(0, nblocks, kGrainBlocks, [&](int64_t b0, int64_t b1) {
#ifdef SPARSE_DROPOUT_X86
      if (vec) return backward_avx512(gp, op, mbits, n, b0, b1, P);
#endif
      backward_scalar(gp, op, mbits, n, b0, b1, P);
    });
  });
  return out;
}

void register_dropout(pybind11::module_& mod) {
  mod.def("dropout_forward", &dropout_forward_cpu,
          "CPU dropout: (x * keep / (1 - p), keep bits uint8) with Philox4x32-10 keep bits of (seed, offset, i)",
          pybind11::arg("x"), pybind11::arg("p"), pybind11::arg("seed_offset"));
  mod.def("dropout_backward", &dropout_backward_cpu, "grad * keep / (1 - p) from dropout_forward's bit mask",
          pybind11::arg("grad"), pybind11::arg("mask"), pybind11::arg("p"));
  mod.def("dropout_isa", &dropout_cpu_isa,
          "'avx512' or 'scalar': the dropout kernel path on this CPU (SPARSE_DROPOUT_ISA=scalar forces the "
          "portable one)");
}

}  // namespace sparse_ext
