"""Reference transposable masks: min-cost flow per tile with networkx (slow; for tests and checks).

Per m x m tile: source -> row_i (capacity n, cost 0) -> col_j (capacity 1, cost -|w_ij|) -> sink
(capacity n, cost 0), n*m units pushed; the row->col edges that carry flow are the kept weights.
"""
from __future__ import annotations

import networkx as nx
import numpy as np
import torch

_SCALE = 2 ** 40  # network simplex needs integer costs: |w| / max|w| scaled to 40 bits


def flow_tile(tile: np.ndarray, n: int) -> np.ndarray:
    """One tile ``[m, m]`` of |w| (float) -> bool ``[m, m]`` optimal transposable mask."""
    m = tile.shape[0]
    top = float(tile.max())
    cost = np.zeros_like(tile, dtype=np.int64) if top == 0 else np.rint(tile / top * _SCALE).astype(np.int64)
    g = nx.DiGraph()
    g.add_node("s", demand=-n * m)
    g.add_node("t", demand=n * m)
    for i in range(m):
        g.add_edge("s", ("r", i), capacity=n, weight=0)
        g.add_edge(("c", i), "t", capacity=n, weight=0)
        for j in range(m):
            g.add_edge(("r", i), ("c", j), capacity=1, weight=-int(cost[i, j]))
    flow = nx.min_cost_flow(g)
    out = np.zeros((m, m), dtype=bool)
    for i in range(m):
        for j in range(m):
            out[i, j] = flow[("r", i)][("c", j)] > 0
    return out


def flow_tiles(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """``[T, m, m]`` scores -> bool ``[T, m, m]``; a Python loop over tiles (reference only)."""
    arr = scores.detach().to("cpu", torch.float64).numpy()
    out = np.stack([flow_tile(t, n) for t in arr]) if len(arr) else np.zeros((0, m, m), dtype=bool)
    return torch.from_numpy(out).to(scores.device)
