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


def exchange(x: torch.Tensor, scores: torch.Tensor, n: int, max_rounds: int = 64) -> torch.Tensor:
    """Local improvement by row-pair exchanges (negative 4-cycles): row i hands a kept column j to row
    k while k hands a kept column l to i. Row and column counts never change, so validity is kept.
    Applies the best exchange per tile per round until no tile improves."""
    x = x.clone()
    t, m, _ = x.shape
    ar = torch.arange(t, device=x.device)
    s = scores
    active = torch.ones(t, dtype=torch.bool, device=x.device)
    for _ in range(max_rounds):
        idx = active.nonzero().squeeze(1)
        if idx.numel() == 0:
            break
        xa, sa = x[idx], s[idx]
        # a[i, k, j]: gain of moving column j from row i to row k (needs x_ij and not x_kj)
        ok_a = xa.unsqueeze(2) & ~xa.unsqueeze(1)  # [B, i, k, j]
        ga = torch.where(ok_a, sa.unsqueeze(1) - sa.unsqueeze(2), torch.full_like(ok_a, NEG, dtype=s.dtype))
        best_a, arg_j = ga.max(3)  # [B, i, k]
        # the reverse move from k to i is best_a[k, i]
        gain = best_a + best_a.transpose(1, 2)
        flat = gain.reshape(idx.numel(), -1)
        g, arg = flat.max(1)
        tol = 1e-7 * sa.reshape(idx.numel(), -1).amax(1).clamp(min=1e-30)
        improve = g > tol
        if not bool(improve.any()):
            break
        i, k = arg // m, arg % m
        j = arg_j[torch.arange(idx.numel(), device=x.device), i, k]
        l = arg_j[torch.arange(idx.numel(), device=x.device), k, i]
        sel = idx[improve]
        i, k, j, l = i[improve], k[improve], j[improve], l[improve]
        x[sel, i, j] = False
        x[sel, k, j] = True
        x[sel, k, l] = False
        x[sel, i, l] = True
        active = torch.zeros_like(active)
        active[sel] = True
    del ar
    return x


def exact(scores: torch.Tensor, n: int) -> torch.Tensor:
    """Exact optimum per tile by successive shortest paths (min-cost flow), batched over tiles.

    Starts from the empty mask and adds one unit of flow per round along a shortest path in the
    residual graph (Bellman-Ford on the dense bipartite graph, vectorised over tiles); after n*m
    rounds every tile is an optimal transposable mask. Costs are -score (fp64 to keep ties sane).
    """
    t, m, _ = scores.shape
    dev = scores.device
    s = scores.to(torch.float64)
    x = torch.zeros(t, m, m, dtype=torch.bool, device=dev)
    ar = torch.arange(t, device=dev)
    inf = torch.tensor(float("inf"), dtype=torch.float64, device=dev)
    for _ in range(n * m):
        row_def = x.sum(2) < n
        col_def = x.sum(1) < n
        d_r = torch.where(row_def, torch.zeros_like(s[:, :, 0]), inf)
        par_r = torch.full((t, m), -1, dtype=torch.long, device=dev)
        d_c = torch.full((t, m), float("inf"), dtype=torch.float64, device=dev)
        par_c = torch.full((t, m), -1, dtype=torch.long, device=dev)
        fwd = torch.where(x, inf, -s)  # row i -> col j adds (i, j)
        bwd = torch.where(x, s, inf)  # col j -> row i drops (i, j)
        for _ in range(2 * m + 2):
            cand_c, arg_r = (d_r.unsqueeze(2) + fwd).min(1)
            upd_c = cand_c < d_c - 1e-12
            d_c = torch.where(upd_c, cand_c, d_c)
            par_c = torch.where(upd_c, arg_r, par_c)
            cand_r, arg_c = (d_c.unsqueeze(1) + bwd).min(2)
            upd_r = cand_r < d_r - 1e-12
            d_r = torch.where(upd_r, cand_r, d_r)
            par_r = torch.where(upd_r, arg_c, par_r)
            if not bool(upd_c.any() | upd_r.any()):
                break
        col = torch.where(col_def, d_c, inf).argmin(1)
        active = torch.ones(t, dtype=torch.bool, device=dev)
        for _ in range(m + 1):
            row = par_c[ar, col]
            x[ar[active], row[active], col[active]] = True
            nxt = par_r[ar, row]
            cont = active & (nxt >= 0)
            x[ar[cont], row[cont], nxt[cont]] = False
            col = torch.where(cont, nxt, col)
            active = cont
            if not bool(active.any()):
                break
    return x
