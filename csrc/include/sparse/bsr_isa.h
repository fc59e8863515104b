// Which native block-sparse kernel family runs on this CPU (csrc/cpu/bsr_isa_select.cpp).
#pragma once

#include <ATen/ATen.h>

namespace sparse_ext::bsr {

// The bf16 tile kernels: AMX (csrc/cpu/bsr_tiles_amx.cpp) or AVX512-BF16
// (csrc/cpu/bsr_tiles_avx512bf16.cpp), both driven by csrc/cpu/bsr_tile_drivers.cpp; kNone: ATen's
// cpublas::brgemm (csrc/cpu/bsr_brgemm.cpp).
enum class TileIsa { kNone, kAmx, kAvx512Bf16 };

// AMX tiles with bf16, and Linux granted this process the tile register state.
bool amx_usable();
// AVX-512 with the bf16 dot product (vdpbf16ps).
bool avx512bf16_usable();

// The tile family for `dtype` with blocks of `bs` (bf16, bs a multiple of 32), kNone otherwise.
// SPARSE_BSR_ISA=amx|avx512bf16|brgemm narrows the choice (tests run every kernel family the CPU has);
// unset: AMX, else AVX512-BF16, else brgemm.
TileIsa tile_isa(at::ScalarType dtype, int64_t bs);

}  // namespace sparse_ext::bsr
