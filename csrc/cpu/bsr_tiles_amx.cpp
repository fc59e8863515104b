// AMX microkernels of the bf16 tile drivers (csrc/cpu/bsr_tile_drivers.cpp).
//
// torch's brgemm wrapper runs one ukernel per call (batch size 1): with a kept block as the K of a call,
// C goes through memory every B = 32..64 K-steps and the per-call overhead (~1 us, measured) dominates,
// and its packed-B leading dimension must be 16..64. These kernels keep a 32 x 32 fp32 output tile in
// the AMX registers across all kept blocks of an output block (any K), loading A tiles straight from the
// dense activations. All 8 tiles are 16 rows x 64 B: tmm0-3 C (2 x 2 tiles of 16 x 16 fp32), tmm4-5 A
// (16 rows x 32 bf16), tmm6-7 B (16 K-pairs x 16 cols).
#include <immintrin.h>

#include <ATen/native/CPUBlas.h>

#include <cstdint>

#include "sparse/bsr_tiles.h"

namespace sparse_ext::bsr {
namespace {

struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

TileConfig make_tile_config() {
  TileConfig cfg;
  for (int i = 0; i < 8; ++i) {
    cfg.colsb[i] = 64;
    cfg.rows[i] = 16;
  }
  return cfg;
}
// Not on the stack: GCC 12 drops stores to a local config only read by ldtilecfg (-> #GP).
const TileConfig kTileConfig = make_tile_config();

}  // namespace

SPARSE_TARGET_AMX void amx_begin() { _tile_loadconfig(&kTileConfig); }
// Through ATen's release: it also forgets the brgemm config ATen believes is loaded in this thread
// (ours replaced it), so a later cpublas::brgemm call in this thread loads its own again.
void amx_end() { at::native::cpublas::brgemm_release(true); }

SPARSE_TARGET_AMX void amx_acc_32x32(const bf16* a, int64_t lda, const int32_t* ip, int64_t p0, int64_t p1,
                                     const bf16* w, int64_t w_stride, int64_t bs, float* c) {
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  const int64_t sa = lda * 2;
  for (int64_t p = p0; p < p1; ++p) {
    const bf16* ab = a + static_cast<int64_t>(ip[p]) * bs;
    const bf16* wb = w + p * w_stride;
    for (int64_t k = 0; k < bs; k += 32) {
      _tile_loadd(4, ab + k, sa);
      _tile_loadd(5, ab + 16 * lda + k, sa);
      _tile_loadd(6, wb + k * 32, 128);
      _tile_loadd(7, wb + k * 32 + 32, 128);
      _tile_dpbf16ps(0, 4, 6);
      _tile_dpbf16ps(1, 4, 7);
      _tile_dpbf16ps(2, 5, 6);
      _tile_dpbf16ps(3, 5, 7);
    }
  }
  _tile_stored(0, c, 128);
  _tile_stored(1, c + 16, 128);
  _tile_stored(2, c + 16 * 32, 128);
  _tile_stored(3, c + 16 * 32 + 16, 128);
}

// C[32, 32] (+)= A[32, k] @ B[k, 32]: A row-major (row stride lda), B VNNI [k/2][ldb][2] (column offset
// already applied); k a multiple of 32; C fp32 row stride ldc.
SPARSE_TARGET_AMX void amx_gemm_32x32(const bf16* a, int64_t lda, const bf16* b, int64_t ldb, int64_t k, float* c,
                                      int64_t ldc, bool add) {
  const int64_t sc = ldc * 4;
  if (add) {
    _tile_loadd(0, c, sc);
    _tile_loadd(1, c + 16, sc);
    _tile_loadd(2, c + 16 * ldc, sc);
    _tile_loadd(3, c + 16 * ldc + 16, sc);
  } else {
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
  }
  const int64_t sa = lda * 2, sb = ldb * 4;
  for (int64_t kk = 0; kk < k; kk += 32) {
    _tile_loadd(4, a + kk, sa);
    _tile_loadd(5, a + 16 * lda + kk, sa);
    _tile_loadd(6, b + kk * ldb, sb);
    _tile_loadd(7, b + kk * ldb + 32, sb);
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
  }
  _tile_stored(0, c, sc);
  _tile_stored(1, c + 16, sc);
  _tile_stored(2, c + 16 * ldc, sc);
  _tile_stored(3, c + 16 * ldc + 16, sc);
}

}  // namespace sparse_ext::bsr
