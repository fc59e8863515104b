"""Device-agnostic batched solvers for transposable N:M tiles (pure torch, no loop over tiles).

Everything works on ``scores [T, m, m]`` (|w| per tile) and a keep-state ``x [T, m, m]`` bool.
Python loops run over positions inside a tile (at most m*m steps), never over tiles.
"""
from __future__ import annotations

import torch

NEG = float("-inf")


def greedy(scores: torch.Tensor, n: int) -> torch.Tensor:
    """The 2-approximation: visit entries by descending score, keep one while its row and column
    hold < n. Returns bool ``[T, m, m]`` (possibly incomplete; see :func:`repair`)."""
    t, m, _ = scores.shape
    dev = scores.device
    order = torch.sort(scores.reshape(t, m * m), dim=1, descending=True, stable=True).indices
    rows_all, cols_all = order // m, order % m
    rowc = torch.zeros(t, m, dtype=torch.int32, device=dev)
    colc = torch.zeros(t, m, dtype=torch.int32, device=dev)
    keep = torch.zeros(t, m * m, dtype=torch.bool, device=dev)
    for k in range(m * m):
        idx, r, c = order[:, k:k + 1], rows_all[:, k:k + 1], cols_all[:, k:k + 1]
        ok = (rowc.gather(1, r) < n) & (colc.gather(1, c) < n)
        keep.scatter_(1, idx, ok)
        inc = ok.to(torch.int32)
        rowc.scatter_add_(1, r, inc)
        colc.scatter_add_(1, c, inc)
    return keep.reshape(t, m, m)


def repair(x: torch.Tensor, scores: torch.Tensor, n: int) -> torch.Tensor:
    """Complete every tile to exactly n per row and column by augmenting paths.

    Each round finds, in every incomplete tile at once, a shortest (BFS) alternating path from a row
    with < n kept to a column with < n kept (add an unkept entry, drop a kept one, ..., add), preferring
    heavy entries to add and light ones to drop, and flips it: +1 kept per row and column at the ends.
    The csrc kernels (``tile_augment``) run this same search with the same tie rules (the first
    row/column index wins), so both backends repair a tile the same way.
    A path always exists while a tile is incomplete (K_{m,m} has an n-factor), so this terminates
    after at most n*m rounds.
    """
    x = x.clone()
    t, m, _ = x.shape
    for _ in range(n * m + 1):
        rowc, colc = x.sum(2), x.sum(1)
        bad = ((rowc < n).any(1) | (colc < n).any(1)).nonzero().squeeze(1)
        if bad.numel() == 0:
            return x
        x[bad] = _augment_once(x[bad], scores[bad], n)
    raise AssertionError("repair did not converge")  # unreachable: each round adds one unit of flow


def _augment_once(x: torch.Tensor, s: torch.Tensor, n: int) -> torch.Tensor:
    b, m, _ = x.shape
    dev = x.device
    ar = torch.arange(b, device=dev)
    row_def = x.sum(2) < n
    col_def = x.sum(1) < n
    seen_r = row_def.clone()
    seen_c = torch.zeros_like(col_def)
    frontier = row_def.clone()
    par_c = torch.full((b, m), -1, dtype=torch.long, device=dev)  # row that reached column j
    par_r = torch.full((b, m), -1, dtype=torch.long, device=dev)  # column that reached row i
    done = torch.zeros(b, dtype=torch.bool, device=dev)
    for _ in range(m + 1):
        # rows -> columns over unkept entries (prefer the heaviest entry to add)
        cand = frontier.unsqueeze(2) & ~x & ~seen_c.unsqueeze(1) & ~done.view(b, 1, 1)
        w = torch.where(cand, s, torch.full_like(s, NEG))
        best_row = w.argmax(1)
        newc = cand.any(1)
        par_c = torch.where(newc, best_row, par_c)
        seen_c |= newc
        done |= (newc & col_def).any(1)
        # columns -> rows over kept entries (prefer the lightest entry to drop)
        cand2 = newc.unsqueeze(1) & x & ~seen_r.unsqueeze(2) & ~done.view(b, 1, 1)
        w2 = torch.where(cand2, -s, torch.full_like(s, NEG))
        best_col = w2.argmax(2)
        newr = cand2.any(2)
        par_r = torch.where(newr, best_col, par_r)
        seen_r |= newr
        frontier = newr
        if bool(done.all()) or not bool(frontier.any()):
            break
    # end column: the deficit column reached with the largest score on its final edge
    end_ok = seen_c & col_def
    gain = torch.where(end_ok, s.gather(1, par_c.clamp(min=0).unsqueeze(1)).squeeze(1), torch.full_like(col_def, NEG, dtype=s.dtype))
    col = gain.argmax(1)
    active = end_ok.any(1)
    x = x.clone()
    for _ in range(m + 1):
        if not bool(active.any()):
            break
        row = par_c[ar, col].clamp(min=0)
        x[ar[active], row[active], col[active]] = True
        nxt = par_r[ar, row]
        stop = nxt < 0
        cont = active & ~stop
        x[ar[cont], row[cont], nxt[cont]] = False
        col = torch.where(cont, nxt, col)
        active = cont
    return x


EXCHANGE_PASSES = 3  # passes of the exchange search (the csrc kernels take the same number)


def exchange(x: torch.Tensor, scores: torch.Tensor, n: int, passes: int = EXCHANGE_PASSES) -> torch.Tensor:
    """Local improvement by row-pair exchanges (negative 4-cycles): row i hands a kept column j to row
    k while k hands a kept column l to i. Row and column counts never change, so validity is kept.

    The search of the csrc kernels (``tile_exchange``), step for step and in the scores' precision, so
    that both backends give the same mask: per pass, the pairs i < k in order, each taking its best
    exchange (first j and l on ties) when the gain exceeds 1e-7 of the tile's largest score.
    """
    x = x.clone()
    t, m, _ = x.shape
    s = scores
    neg = torch.full((), NEG, dtype=s.dtype, device=s.device)
    tol = torch.full((), 1e-7, dtype=s.dtype, device=s.device) * s.reshape(t, -1).amax(1)
    for _ in range(passes):
        improved = False
        for i in range(m):
            for k in range(i + 1, m):
                xi, xk, si, sk = x[:, i], x[:, k], s[:, i], s[:, k]
                give, take = xi & ~xk, xk & ~xi            # j: i -> k, l: k -> i
                ga_all = torch.where(give, sk - si, neg)
                gb_all = torch.where(take, si - sk, neg)
                j, l = ga_all.argmax(1, keepdim=True), gb_all.argmax(1, keepdim=True)
                gain = ga_all.gather(1, j).squeeze(1) + gb_all.gather(1, l).squeeze(1)
                sel = (give.any(1) & (gain > tol)).nonzero().squeeze(1)
                if sel.numel() == 0:
                    continue
                j, l = j.squeeze(1)[sel], l.squeeze(1)[sel]
                x[sel, i, j] = False
                x[sel, k, j] = True
                x[sel, k, l] = False
                x[sel, i, l] = True
                improved = True
        if not improved:
            break
    return x


def exact(scores: torch.Tensor, n: int) -> torch.Tensor:
    """Exact optimum per tile by successive shortest paths (min-cost flow), batched over tiles.

    The csrc kernel's ``tile_exact`` step for step, vectorised over tiles, so that both backends return
    the same mask even where several masks are optimal: n*m augmentations of one unit from the empty
    mask, each along a shortest residual path found by Dijkstra with Johnson potentials (every reduced
    cost >= 0), in fp64 with the kernel's operation order and tie rules (the lowest node id is settled
    first, strict improvements only). Python loops run over steps inside a tile (about 2m per
    augmentation), never over tiles.
    """
    t, m, _ = scores.shape
    dev = scores.device
    s = scores.to(torch.float64)                  # float -> double is exact, as in the kernel
    inf = torch.tensor(float("inf"), dtype=torch.float64, device=dev)
    ar = torch.arange(t, device=dev)
    node = torch.arange(2 * m, device=dev)
    x = torch.zeros(t, m, m, dtype=torch.bool, device=dev)
    rdeg = torch.zeros(t, m, dtype=torch.long, device=dev)
    cdeg = torch.zeros(t, m, dtype=torch.long, device=dev)
    # Potentials: rows 0, column j -max_i s_ij, sink the smallest column potential.
    pot = torch.cat([torch.zeros(t, m, dtype=torch.float64, device=dev), -s.amax(1)], 1)
    pot_t = pot[:, m:].amin(1)
    live = torch.ones(t, dtype=torch.bool, device=dev)  # False only if a tile found no path (non-finite input)
    for _ in range(n * m):
        dist = torch.cat([torch.where(rdeg < n, -pot[:, :m], inf), inf.expand(t, m)], 1)
        prev = torch.full((t, 2 * m), -1, dtype=torch.long, device=dev)
        closed = torch.zeros(t, 2 * m, dtype=torch.bool, device=dev)
        d_t = inf.expand(t).clone()
        endc = torch.full((t,), -1, dtype=torch.long, device=dev)
        for _ in range(2 * m):
            cand = torch.where(closed, inf, dist)
            u = cand.argmin(1)
            du = cand.gather(1, u[:, None]).squeeze(1)
            active = (du < d_t) & live
            if not bool(active.any()):
                break
            closed |= active[:, None] & (node[None, :] == u[:, None])
            pu = du + pot.gather(1, u[:, None]).squeeze(1)
            is_row = u < m
            r, c = u.clamp(max=m - 1), (u - m).clamp(min=0)
            # row u -> column j over unkept entries: (pu - s_uj) - pot_j
            nd_c = (pu[:, None] - s[ar, r, :]) - pot[:, m:]
            upd_c = (active & is_row)[:, None] & ~x[ar, r, :] & (nd_c < dist[:, m:])
            dist[:, m:] = torch.where(upd_c, nd_c, dist[:, m:])
            prev[:, m:] = torch.where(upd_c, u[:, None], prev[:, m:])
            # column c -> row i over kept entries: (pu + s_ic) - pot_i; column c -> sink if not full
            nd_r = (pu[:, None] + s[ar, :, c]) - pot[:, :m]
            to_col = active & ~is_row
            upd_r = to_col[:, None] & x[ar, :, c] & (nd_r < dist[:, :m])
            dist[:, :m] = torch.where(upd_r, nd_r, dist[:, :m])
            prev[:, :m] = torch.where(upd_r, u[:, None], prev[:, :m])
            via = pu - pot_t
            upd_t = to_col & (cdeg[ar, c] < n) & (via < d_t)
            d_t = torch.where(upd_t, via, d_t)
            endc = torch.where(upd_t, c, endc)
        live &= endc >= 0
        # Augment: sink <- column endc <- row <- column <- ... <- a row with spare capacity.
        cdeg[ar[live], endc[live]] += 1
        v = m + endc.clamp(min=0)
        active = live.clone()
        for _ in range(2 * m):
            if not bool(active.any()):
                break
            row = prev[ar, v].clamp(min=0)
            x[ar[active], row[active], v[active] - m] = True
            p = prev[ar, row]
            stop = active & (p < 0)
            rdeg[ar[stop], row[stop]] += 1
            cont = active & (p >= 0)
            x[ar[cont], row[cont], p[cont] - m] = False
            v = torch.where(cont, p, v)
            active = cont
        step = torch.where(dist < d_t[:, None], dist, d_t[:, None])
        pot = torch.where(live[:, None], pot + step, pot)
        pot_t = torch.where(live, pot_t + d_t, pot_t)
    return x
