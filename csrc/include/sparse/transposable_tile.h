// Per-tile transposable N:M solvers, shared verbatim by the C++/OpenMP launcher and the CUDA kernel
// (one thread per tile), so the CPU tests exercise the exact code that runs on the GPU.
//
// A tile is the aligned m x m block of W at (tile_row, tile_col); element (i, j) of the tile lives at
// w[(r0 + i) * ld + c0 + j]. The mask is written to the same position of `keep`.
//
// T is float or double: every score and comparison is in the weight's own precision (fp64 weights are
// never rounded to fp32, where 1e300 is inf and values closer than fp32 precision tie). The searches
// match the pure-torch backend (sparse/masks/_batched.py) step for step, tie rules included, so a given
// input gets the same mask on every backend.
#pragma once

#include <stdint.h>

#if !defined(__CUDA_ARCH__)
#include <algorithm>
#include <cmath>
#include <limits>
#endif

#include "sparse/common.h"

namespace sparse_ext {

template <typename T>
struct TileView {
  const T* w;     // pointer to the tile's (0, 0) element
  uint8_t* keep;  // output, same layout as w
  int64_t ld;     // leading dimension (columns of the full matrix)
};

// |v| with -0.0 -> +0.0 (as torch's abs), so a sign bit never orders a zero above anything.
template <typename T>
SPARSE_HD T tile_abs(T v) {
#if defined(__CUDA_ARCH__)
  return fabs(v);
#else
  return std::fabs(v);
#endif
}

SPARSE_HD double tile_inf() {
#if defined(__CUDA_ARCH__)
  return __longlong_as_double(0x7ff0000000000000LL);
#else
  return std::numeric_limits<double>::infinity();
#endif
}

SPARSE_HD int tile_ctz64(uint64_t v) {
#if defined(__CUDA_ARCH__)
  return __ffsll((long long)v) - 1;
#else
  return __builtin_ctzll(v);
#endif
}

template <typename T>
SPARSE_HD T tile_score(const TileView<T>& t, int i, int j) {
  return tile_abs(t.w[i * t.ld + j]);
}

// ---------------------------------------------------------------------------------------------
// Exact: successive shortest paths with Johnson potentials (Dijkstra on a dense graph).
// Nodes: rows 0..m-1, columns m..2m-1, source S = 2m, sink T = 2m+1. Edge row i -> col j (capacity
// 1, cost -|w_ij|), S -> row (capacity n), col -> T (capacity n). n*m augmentations of one unit each;
// each keeps the flow min-cost for its value, so the final flow is an optimal transposable mask.
// ---------------------------------------------------------------------------------------------
template <typename T>
SPARSE_HD void tile_exact(const TileView<T>& t, int n, int m) {
  // S (source) is implicit: every row with spare capacity starts at distance -pot[row]. T (sink) is
  // implicit too: reaching column j with spare capacity costs pot[j] - potT more. Node ids: rows
  // 0..m-1, columns m..2m-1.
  const int V = 2 * m;
  const double INF = tile_inf();  // a true infinity: finite weights (up to DBL_MAX) stay below it
  uint32_t xr[kMaxM];  // kept columns of each row (bit set)
  int rdeg[kMaxM], cdeg[kMaxM];
  double pot[2 * kMaxM], dist[2 * kMaxM];
  double potT;
  int prev[2 * kMaxM];
  T s[kMaxM * kMaxM];
  for (int i = 0; i < m; ++i) {
    rdeg[i] = 0;
    cdeg[i] = 0;
    xr[i] = 0;
    for (int j = 0; j < m; ++j) s[i * m + j] = tile_score(t, i, j);
  }
  // Initial potentials make every reduced cost >= 0: pot(col j) = -max_i |w_ij|, pot(T) = min_j.
  potT = INF;
  for (int i = 0; i < m; ++i) pot[i] = 0.0;
  for (int j = 0; j < m; ++j) {
    T mx = 0;
    for (int i = 0; i < m; ++i) mx = s[i * m + j] > mx ? s[i * m + j] : mx;
    pot[m + j] = -(double)mx;
    potT = pot[m + j] < potT ? pot[m + j] : potT;
  }

  for (int unit = 0; unit < n * m; ++unit) {
    uint64_t open = 0;  // settled nodes are removed from this set
    for (int v = 0; v < V; ++v) {
      prev[v] = -1;
      dist[v] = INF;
    }
    for (int i = 0; i < m; ++i)
      if (rdeg[i] < n) dist[i] = -pot[i];  // S -> row i, reduced cost 0 + potS(=0) - pot[i]
    for (int v = 0; v < V; ++v) open |= (uint64_t)1 << v;
    double dT = INF;
    int endc = -1;
    for (;;) {
      int u = -1;
      double best = dT;  // nodes at distance >= dT can no longer improve the path to T
      for (uint64_t o = open; o; o &= o - 1) {
        const int v = tile_ctz64(o);
        if (dist[v] < best) { best = dist[v]; u = v; }
      }
      if (u < 0) break;
      open &= ~((uint64_t)1 << u);
      const double du = dist[u];
      if (u < m) {  // row -> column over unkept entries
        const T* su = s + u * m;
        const double pu = du + pot[u];
        for (int j = 0; j < m; ++j)
          if (!((xr[u] >> j) & 1u)) {
            const double nd = pu - (double)su[j] - pot[m + j];
            if (nd < dist[m + j]) { dist[m + j] = nd; prev[m + j] = u; }
          }
      } else {  // column -> row over kept entries; column -> T when not full
        const int j = u - m;
        const double pu = du + pot[u];
        for (int i = 0; i < m; ++i)
          if ((xr[i] >> j) & 1u) {
            const double nd = pu + (double)s[i * m + j] - pot[i];
            if (nd < dist[i]) { dist[i] = nd; prev[i] = u; }
          }
        if (cdeg[j] < n && pu - potT < dT) {
          dT = pu - potT;
          endc = j;
        }
      }
    }
    // Augment: T <- col endc <- row <- col <- ... <- row (a row with spare capacity). A path always
    // exists while units remain (K_{m,m} has an n-factor); endc < 0 could only come from non-finite
    // scores, which the callers refuse: stop rather than write through index -1.
    if (endc < 0) break;
    cdeg[endc] += 1;
    int v = m + endc;
    for (int guard = 0; guard < V; ++guard) {
      const int r = prev[v];  // v is a column, r a row
      if (r < 0) break;
      xr[r] |= 1u << (v - m);
      const int p = prev[r];
      if (p < 0) { rdeg[r] += 1; break; }
      xr[r] &= ~(1u << (p - m));  // p is the column reached through the kept entry (r, p)
      v = p;
    }
    for (int u = 0; u < V; ++u) pot[u] += (dist[u] < dT ? dist[u] : dT);
    potT += dT;
  }
  for (int i = 0; i < m; ++i)
    for (int j = 0; j < m; ++j) t.keep[i * t.ld + j] = (xr[i] >> j) & 1u;
}

// ---------------------------------------------------------------------------------------------
// Approx: greedy 2-approximation, repair by BFS augmenting paths, then row-pair exchanges (negative
// 4-cycles). Always complete and valid.
// ---------------------------------------------------------------------------------------------
// Sort keys: descending |w|, ties towards the lower index. For float, |w| >= 0 (+0.0 for zeros: see
// tile_abs), so its IEEE bits order like the value and the index fits in the low word of one uint64;
// a double needs all 64 bits, so it sorts (value, index) pairs.
struct KeyF {
  uint64_t k;
  SPARSE_HD int index() const { return (int)(0xFFFFFFFFu - (uint32_t)(k & 0xFFFFFFFFu)); }
  SPARSE_HD bool before(const KeyF& o) const { return k > o.k; }
};
struct KeyD {
  double v;
  int idx;
  SPARSE_HD int index() const { return idx; }
  SPARSE_HD bool before(const KeyD& o) const { return v > o.v || (v == o.v && idx < o.idx); }
};

SPARSE_HD KeyF tile_key(float v, int idx) {
  union {
    float f;
    uint32_t u;
  } bits;
  bits.f = v;
  return KeyF{((uint64_t)bits.u << 32) | (uint64_t)(0xFFFFFFFFu - (uint32_t)idx)};
}
SPARSE_HD KeyD tile_key(double v, int idx) { return KeyD{v, idx}; }

template <typename T>
SPARSE_HD void tile_greedy(const T* s, uint8_t* x, int* rdeg, int* cdeg, int n, int m) {
  using Key = decltype(tile_key(T(0), 0));
  Key keys[kMaxM * kMaxM];
  const int mm = m * m;
  for (int k = 0; k < mm; ++k) keys[k] = tile_key(s[k], k);
#if defined(__CUDA_ARCH__)
  // Shell sort (descending) with Ciura's gaps: no recursion or allocation on device.
  const int gaps[8] = {701, 301, 132, 57, 23, 10, 4, 1};
  for (int g = 0; g < 8; ++g) {
    const int gap = gaps[g];
    for (int k = gap; k < mm; ++k) {
      const Key v = keys[k];
      int q = k;
      while (q >= gap && v.before(keys[q - gap])) {
        keys[q] = keys[q - gap];
        q -= gap;
      }
      keys[q] = v;
    }
  }
#else
  std::sort(keys, keys + mm, [](const Key& a, const Key& b) { return a.before(b); });  // ~1.7x faster on host
#endif
  int filled = 0;
  for (int k = 0; k < mm && filled < n * m; ++k) {
    const int e = keys[k].index(), i = e / m, j = e % m;
    if (rdeg[i] < n && cdeg[j] < n) {
      x[e] = 1;
      ++rdeg[i];
      ++cdeg[j];
      ++filled;
    }
  }
}

// One augmenting path, or false if the tile is complete. Layered BFS from every deficit row at once:
// each new column is reached from the frontier row with the heaviest unkept entry (the entry to add),
// each new row from the new column with the lightest kept entry (the entry to drop); the search stops
// at the first layer that reaches a deficit column and ends at the one reached by the heaviest entry.
// Ties: the lowest row / column index. This is _batched._augment_once of the torch backend, per tile.
template <typename T>
SPARSE_HD bool tile_augment(const T* s, uint8_t* x, int* rdeg, int* cdeg, int n, int m) {
  int par_c[kMaxM], par_r[kMaxM];
  bool seen_r[kMaxM], seen_c[kMaxM], front[kMaxM], newc[kMaxM];
  bool any_row = false;
  for (int i = 0; i < m; ++i) {
    seen_r[i] = front[i] = rdeg[i] < n;
    any_row |= front[i];
    seen_c[i] = false;
    par_c[i] = -1;
    par_r[i] = -1;
  }
  if (!any_row) return false;  // every row holds n, so every column does too
  const T NEG = (T)-tile_inf();
  bool done = false;
  for (int layer = 0; layer <= m && !done; ++layer) {
    for (int j = 0; j < m; ++j) {  // rows -> columns over unkept entries
      newc[j] = false;
      if (seen_c[j]) continue;
      T best = NEG;
      int arg = -1;
      for (int i = 0; i < m; ++i)
        if (front[i] && !x[i * m + j] && (arg < 0 || s[i * m + j] > best)) {
          best = s[i * m + j];
          arg = i;
        }
      if (arg >= 0) {
        newc[j] = true;
        par_c[j] = arg;
      }
    }
    for (int j = 0; j < m; ++j)
      if (newc[j]) {
        seen_c[j] = true;
        done |= cdeg[j] < n;
      }
    if (done) break;
    bool any_front = false;
    for (int k = 0; k < m; ++k) {  // columns -> rows over kept entries
      front[k] = false;
      if (seen_r[k]) continue;
      T best = NEG;
      int arg = -1;
      for (int j = 0; j < m; ++j)
        if (newc[j] && x[k * m + j] && (arg < 0 || -s[k * m + j] > best)) {
          best = -s[k * m + j];
          arg = j;
        }
      if (arg >= 0) {
        front[k] = true;
        par_r[k] = arg;
        any_front = true;
      }
    }
    for (int k = 0; k < m; ++k) seen_r[k] |= front[k];
    if (!any_front) break;
  }
  int end = -1;
  T gain = NEG;
  for (int j = 0; j < m; ++j)
    if (seen_c[j] && cdeg[j] < n && (end < 0 || s[par_c[j] * m + j] > gain)) {
      gain = s[par_c[j] * m + j];
      end = j;
    }
  if (end < 0) return false;
  cdeg[end] += 1;
  int j = end;
  for (int guard = 0; guard <= m; ++guard) {
    const int i = par_c[j];
    x[i * m + j] = 1;
    const int jp = par_r[i];
    if (jp < 0) {
      rdeg[i] += 1;
      break;
    }
    x[i * m + jp] = 0;
    j = jp;
  }
  return true;
}

SPARSE_HD int tile_ctz(uint32_t v) {
#if defined(__CUDA_ARCH__)
  return __ffs(v) - 1;
#else
  return __builtin_ctz(v);
#endif
}

// Row-pair exchanges, first improvement: per pass, the pairs i < k in order, each applying its best
// exchange (lowest j, l on ties) when the gain exceeds tol; in T's precision. The torch backend's
// _batched.exchange runs the same steps.
template <typename T>
SPARSE_HD void tile_exchange(const T* s, uint8_t* x, int m, int max_passes, T tol) {
  uint32_t row[kMaxM];  // kept columns of each row as a bit set
  for (int i = 0; i < m; ++i) {
    row[i] = 0;
    for (int j = 0; j < m; ++j) row[i] |= (uint32_t)x[i * m + j] << j;
  }
  for (int pass = 0; pass < max_passes; ++pass) {
    bool improved = false;
    for (int i = 0; i < m; ++i)
      for (int k = i + 1; k < m; ++k) {
        // Row i gives column j to row k; row k gives column l to row i.
        uint32_t a = row[i] & ~row[k], b = row[k] & ~row[i];
        if (!a || !b) continue;
        T ga = 0, gb = 0;
        int bj = -1, bl = -1;
        const T* si = s + i * m;
        const T* sk = s + k * m;
        for (; a; a &= a - 1) {
          const int j = tile_ctz(a);
          const T g = sk[j] - si[j];
          if (bj < 0 || g > ga) { ga = g; bj = j; }
        }
        for (; b; b &= b - 1) {
          const int l = tile_ctz(b);
          const T g = si[l] - sk[l];
          if (bl < 0 || g > gb) { gb = g; bl = l; }
        }
        if (ga + gb > tol) {
          row[i] ^= (1u << bj) | (1u << bl);
          row[k] ^= (1u << bj) | (1u << bl);
          improved = true;
        }
      }
    if (!improved) break;
  }
  for (int i = 0; i < m; ++i)
    for (int j = 0; j < m; ++j) x[i * m + j] = (row[i] >> j) & 1u;
}

// The plain 2-approximation made valid: greedy, then augmenting-path repair (method "greedy").
template <typename T>
SPARSE_HD void tile_greedy_repair(const TileView<T>& t, int n, int m) {
  T s[kMaxM * kMaxM];
  uint8_t x[kMaxM * kMaxM];
  int rdeg[kMaxM], cdeg[kMaxM];
  for (int i = 0; i < m; ++i) {
    rdeg[i] = 0;
    cdeg[i] = 0;
    for (int j = 0; j < m; ++j) {
      s[i * m + j] = tile_score(t, i, j);
      x[i * m + j] = 0;
    }
  }
  tile_greedy(s, x, rdeg, cdeg, n, m);
  for (int guard = 0; guard < n * m; ++guard)
    if (!tile_augment(s, x, rdeg, cdeg, n, m)) break;
  for (int i = 0; i < m; ++i)
    for (int j = 0; j < m; ++j) t.keep[i * t.ld + j] = x[i * m + j];
}

// Exchange search is weakest for very small n (1:8 keeps ~99.3%), where the exact solver costs about
// the same (n*m augmentations), so small n is solved exactly.
constexpr int kApproxExactMaxN = 2;

template <typename T>
SPARSE_HD void tile_approx(const TileView<T>& t, int n, int m, int max_passes) {
  if (n <= kApproxExactMaxN) {
    tile_exact(t, n, m);
    return;
  }
  T s[kMaxM * kMaxM];
  uint8_t x[kMaxM * kMaxM];
  int rdeg[kMaxM], cdeg[kMaxM];
  T mx = 0;
  for (int i = 0; i < m; ++i) {
    rdeg[i] = 0;
    cdeg[i] = 0;
    for (int j = 0; j < m; ++j) {
      s[i * m + j] = tile_score(t, i, j);
      mx = s[i * m + j] > mx ? s[i * m + j] : mx;
      x[i * m + j] = 0;
    }
  }
  tile_greedy(s, x, rdeg, cdeg, n, m);
  for (int guard = 0; guard < n * m; ++guard)
    if (!tile_augment(s, x, rdeg, cdeg, n, m)) break;
  tile_exchange(s, x, m, max_passes, (T)1e-7 * mx);
  for (int i = 0; i < m; ++i)
    for (int j = 0; j < m; ++j) t.keep[i * t.ld + j] = x[i * m + j];
}

// ---------------------------------------------------------------------------------------------
// Enumeration (small m): every valid pattern is a tuple of m row-combinations; the score of a
// pattern is the sum of its rows' combination sums, so per tile we compute the C(m, n) sums of each
// row once and then m additions per pattern. Ties: the first pattern (lexicographic order) wins.
// combos: [num_combos, n] column indices; patterns: [num_patterns, m] combination index per row
// (the launchers check both: every index in range, at least one pattern).
// ---------------------------------------------------------------------------------------------
constexpr int kMaxEnumCombos = 32;  // C(6,3) = 20 is the largest used
constexpr int kMaxEnumM = 6;

template <typename T>
SPARSE_HD void tile_enum(const TileView<T>& t, int n, int m, const int32_t* combos, int num_combos,
                         const int32_t* patterns, int num_patterns) {
  T rs[kMaxEnumM * kMaxEnumCombos];
  for (int i = 0; i < m; ++i)
    for (int c = 0; c < num_combos; ++c) {
      T acc = 0;
      for (int q = 0; q < n; ++q) acc += tile_score(t, i, combos[c * n + q]);
      rs[i * kMaxEnumCombos + c] = acc;
    }
  T best = -1;
  int arg = 0;
  for (int p = 0; p < num_patterns; ++p) {
    T acc = 0;
    for (int i = 0; i < m; ++i) acc += rs[i * kMaxEnumCombos + patterns[p * m + i]];
    if (acc > best) { best = acc; arg = p; }
  }
  for (int i = 0; i < m; ++i) {
    for (int j = 0; j < m; ++j) t.keep[i * t.ld + j] = 0;
    const int c = patterns[arg * m + i];
    for (int q = 0; q < n; ++q) t.keep[i * t.ld + combos[c * n + q]] = 1;
  }
}

// ---------------------------------------------------------------------------------------------
// 1-D N:M along rows: keep the n largest |w| of each group of m (ties towards the lower index).
// ---------------------------------------------------------------------------------------------
template <typename T>
SPARSE_HD void group_nm(const T* w, uint8_t* keep, int n, int m) {
  for (int a = 0; a < m; ++a) {
    const T va = tile_abs(w[a]);
    int rank = 0;
    for (int b = 0; b < m; ++b) {
      const T vb = tile_abs(w[b]);
      rank += (vb > va) || (vb == va && b < a);
    }
    keep[a] = rank < n;
  }
}

}  // namespace sparse_ext
