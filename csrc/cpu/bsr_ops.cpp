// Entry points of the native block-sparse matmuls (sparse._C.bsr_dds / bsr_sdd): argument checks, then
// the bf16 tile kernels where tile_isa picks a family (bsr_tile_drivers.cpp), else ATen's brgemm
// (bsr_brgemm.cpp).
#include <ATen/ATen.h>

#include <optional>
#include <vector>

#include "sparse/bsr_brgemm.h"
#include "sparse/bsr_cpu.h"
#include "sparse/bsr_isa.h"
#include "sparse/bsr_tiles.h"

namespace sparse_ext {
namespace {

void check_index(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kInt && t.dim() == 1 && t.is_contiguous(), name,
              ": expected a contiguous 1-D int32 CPU tensor, got ", t.scalar_type(), " ", t.sizes(), " on ",
              t.device());
}

// Index *values* are checked here, at every call, so that no caller (the Python layer validates layouts
// once per version, but sparse._C and torch.ops.sparse are callable directly, and `.data` writes bypass
// version counters) can make a kernel read or write outside its operands. One pass over O(nnz + rows)
// int32s: noise against the B*B*tokens work per block.

// Non-decreasing pointers from 0 to `total`.
void check_pointers(const at::Tensor& t, int64_t total, const char* name) {
  const int32_t* p = t.data_ptr<int32_t>();
  const int64_t n = t.numel();
  TORCH_CHECK(n >= 1 && p[0] == 0 && p[n - 1] == total, name, ": expected non-decreasing pointers from 0 to ", total,
              ", got ", n ? p[0] : -1, " .. ", n ? p[n - 1] : -1);
  for (int64_t i = 1; i < n; ++i)
    TORCH_CHECK(p[i - 1] <= p[i], name, ": expected non-decreasing pointers, got ", p[i - 1], " then ", p[i],
                " at ", i);
}

// Every entry in [0, hi).
void check_range(const at::Tensor& t, int64_t hi, const char* name) {
  const int32_t* p = t.data_ptr<int32_t>();
  for (int64_t i = 0; i < t.numel(); ++i)
    TORCH_CHECK(0 <= p[i] && p[i] < hi, name, ": expected entries in [0, ", hi, "), got ", p[i], " at ", i);
}

// A permutation of range(n): every data block written exactly once (no races, no uninitialised output).
void check_permutation(const at::Tensor& t, int64_t n, const char* name) {
  check_range(t, n, name);
  std::vector<uint8_t> seen(n, 0);
  const int32_t* p = t.data_ptr<int32_t>();
  for (int64_t i = 0; i < t.numel(); ++i) {
    TORCH_CHECK(!seen[p[i]], name, ": expected a permutation of range(", n, "), got ", p[i], " twice");
    seen[p[i]] = 1;
  }
}

void check_block(int64_t block, const char* fn) {
  TORCH_CHECK(block == 16 || block == 32 || block == 64 || block == 128, fn,
              ": block: expected 16, 32, 64 or 128, got ", block);
}

void check_tile(int64_t v, const char* name) {
  TORCH_CHECK(1 <= v && v <= (int64_t)1 << 16, name, ": expected 1 .. 65536, got ", v);
}

}  // namespace

at::Tensor bsr_dds_cpu(const at::Tensor& a, const at::Tensor& data, const at::Tensor& seg, const at::Tensor& idx,
                       const at::Tensor& dptr, bool trans_w, int64_t m_tile, const std::optional<at::Tensor>& bias) {
  TORCH_CHECK(a.device().is_cpu() && a.dim() == 2, "bsr_dds: a: expected a 2-D CPU tensor, got ", a.sizes());
  TORCH_CHECK(data.dim() == 3 && data.size(1) == data.size(2) && data.scalar_type() == a.scalar_type() &&
                  data.device().is_cpu(),
              "bsr_dds: data: expected [nnz, B, B] of a's dtype ", a.scalar_type(), ", got ", data.scalar_type(),
              " ", data.sizes());
  check_block(data.size(1), "bsr_dds");
  TORCH_CHECK(bsr_brgemm_supported(a.scalar_type(), data.size(1)), "bsr_dds: dtype ", a.scalar_type(),
              " with block ", data.size(1), " has no native kernel on this CPU");
  check_tile(m_tile, "bsr_dds: m_tile");
  check_index(seg, "bsr_dds: seg");
  check_index(idx, "bsr_dds: idx");
  TORCH_CHECK(idx.numel() == data.size(0), "bsr_dds: idx: expected nnz=", data.size(0), " entries, got ",
              idx.numel());
  TORCH_CHECK(dptr.numel() == 0 || dptr.numel() == data.size(0), "bsr_dds: dptr: expected 0 or nnz entries");
  if (dptr.numel()) check_index(dptr, "bsr_dds: dptr");
  const int64_t bs = data.size(1);
  TORCH_CHECK(seg.numel() >= 1 && a.size(1) % bs == 0, "bsr_dds: a: expected columns a multiple of B=", bs);
  check_pointers(seg, idx.numel(), "bsr_dds: seg");
  check_range(idx, a.size(1) / bs, "bsr_dds: idx");
  if (dptr.numel()) check_range(dptr, data.size(0), "bsr_dds: dptr");
  const at::Tensor ac = a.contiguous(), dc = data.contiguous();
  at::Tensor bias_f;  // fp32 copy: added before the one rounding to the output dtype
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->device().is_cpu() && bias->is_floating_point() && bias->dim() == 1 &&
                    bias->numel() == (seg.numel() - 1) * bs,
                "bsr_dds: bias: expected a 1-D floating-point CPU tensor of ", (seg.numel() - 1) * bs,
                " entries, got ", bias->scalar_type(), " ", bias->sizes());
    bias_f = bias->to(at::kFloat).contiguous();
  }
  const float* bp = bias_f.defined() ? bias_f.data_ptr<float>() : nullptr;
  const bsr::TileIsa isa = bsr::tile_isa(a.scalar_type(), bs);
  if (isa != bsr::TileIsa::kNone) return bsr::dds_tiles(isa, ac, dc, seg, idx, dptr, trans_w, m_tile, bp);
  return bsr::dds_brgemm(ac, dc, seg, idx, dptr, trans_w, m_tile, bp);
}

at::Tensor bsr_sdd_cpu(const at::Tensor& a, const at::Tensor& b, const at::Tensor& crow, const at::Tensor& col,
                       const at::Tensor& ccol, const at::Tensor& row_t, const at::Tensor& perm_t, int64_t block,
                       bool trans_a, bool trans_b, int64_t k_tile, const std::optional<at::Tensor>& colsum) {
  TORCH_CHECK(a.device().is_cpu() && b.device().is_cpu() && a.dim() == 2 && b.dim() == 2 &&
                  a.scalar_type() == b.scalar_type(),
              "bsr_sdd: expected 2-D CPU tensors of one dtype, got ", a.sizes(), " ", a.scalar_type(), " and ",
              b.sizes(), " ", b.scalar_type());
  check_block(block, "bsr_sdd");
  TORCH_CHECK(bsr_brgemm_supported(a.scalar_type(), block), "bsr_sdd: dtype ", a.scalar_type(), " with block ",
              block, " has no native kernel on this CPU");
  check_tile(k_tile, "bsr_sdd: k_tile");
  check_index(crow, "bsr_sdd: crow");
  check_index(col, "bsr_sdd: col");
  const at::Tensor l = trans_a ? a.t() : a, r = trans_b ? b.t() : b;
  TORCH_CHECK(l.size(1) == r.size(0) && l.size(0) == (crow.numel() - 1) * block && r.size(1) % block == 0,
              "bsr_sdd: shapes ", l.sizes(), " @ ", r.sizes(), " do not match the layout (block ", block, ")");
  const int64_t nnz = col.numel(), n_rows = crow.numel() - 1, n_cols = r.size(1) / block;
  check_pointers(crow, nnz, "bsr_sdd: crow");
  check_range(col, n_cols, "bsr_sdd: col");
  float* cs = nullptr;
  if (colsum.has_value() && colsum->defined()) {
    TORCH_CHECK(colsum->device().is_cpu() && colsum->scalar_type() == at::kFloat && colsum->is_contiguous() &&
                    colsum->dim() == 1 && colsum->numel() == l.size(0),
                "bsr_sdd: colsum: expected a zeroed contiguous float32 CPU tensor [", l.size(0), "], got ",
                colsum->scalar_type(), " ", colsum->sizes());
    cs = colsum->data_ptr<float>();
  }
  const bsr::TileIsa isa = bsr::tile_isa(a.scalar_type(), block);
  if (isa != bsr::TileIsa::kNone) {
    check_index(ccol, "bsr_sdd: ccol");
    check_index(row_t, "bsr_sdd: row_t");
    check_index(perm_t, "bsr_sdd: perm_t");
    TORCH_CHECK(ccol.numel() == n_cols + 1 && row_t.numel() == nnz && perm_t.numel() == nnz,
                "bsr_sdd: transpose metadata does not match the layout");
    check_pointers(ccol, nnz, "bsr_sdd: ccol");
    check_range(row_t, n_rows, "bsr_sdd: row_t");
    check_permutation(perm_t, nnz, "bsr_sdd: perm_t");
    // The column-wise split writes block perm_t[p] as (row_t[p], c): it must be the block crow/col put there.
    std::vector<int32_t> row_of(nnz);
    const int32_t* cp = crow.data_ptr<int32_t>();
    for (int64_t i = 0; i < n_rows; ++i)
      for (int64_t p = cp[i]; p < cp[i + 1]; ++p) row_of[p] = (int32_t)i;
    const int32_t *ccp = ccol.data_ptr<int32_t>(), *rtp = row_t.data_ptr<int32_t>(), *ptp = perm_t.data_ptr<int32_t>();
    const int32_t* colp = col.data_ptr<int32_t>();
    for (int64_t c = 0; c < n_cols; ++c)
      for (int64_t p = ccp[c]; p < ccp[c + 1]; ++p)
        TORCH_CHECK(row_of[ptp[p]] == rtp[p] && colp[ptp[p]] == c, "bsr_sdd: ccol/row_t/perm_t: block ", p,
                    " of the transpose is (", rtp[p], ", ", c, ") but perm_t points at block ", ptp[p], " (",
                    row_of[ptp[p]], ", ", colp[ptp[p]], ")");
    // Token-major operands (a linear layer's x and dY already are): views are copied only if not.
    return bsr::sdd_tiles(isa, l.t().contiguous(), r.contiguous(), crow, col, ccol, row_t, perm_t, block, k_tile,
                          cs);
  }
  if (cs) colsum->copy_(l.sum(1, false, at::kFloat));
  return bsr::sdd_brgemm(l, r, crow, col, block, k_tile);
}

}  // namespace sparse_ext
