"""SparseGPT (Frantar & Alistarh, 2023): one-shot pruning of one Linear with optimal-brain-surgeon updates.

Per layer, with calibration inputs X ``[T, in]`` and ``H = X^T X`` (the Hessian of the layer's
squared output error, up to a factor; accumulated in at least fp32):

1. damping: ``H += damp * mean(diag H) * I`` (1 % by default); input features that are zero on
   every calibration token ("dead" columns, ``H_jj = 0``) get ``H_jj = 1`` and their weights are
   zeroed, as in the reference code (they cannot change the calibration outputs);
2. ``U``: the upper Cholesky factor of ``H^-1``; row ``c`` of ``U`` is the OBS update direction of
   column ``c`` given that columns ``< c`` are already fixed;
3. sweep the columns in blocks of 128 (lazy batch updates: inside a block the update is applied to
   the block's columns, the rest of W gets one ``Err @ U[block, rest]`` per block). At the first
   column of every group the mask is chosen on the *already-updated* weights from the OBS scores
   ``w^2 / U_cc^2``:

   * 1-D N:M: keep the ``n`` best of each group of ``m`` columns per row (:func:`sparse.masks.nm_mask`);
   * transposable N:M: the ``rows x m`` score block is split into ``m x m`` tiles and each tile's
     mask is chosen by the exact transposable solver (:func:`sparse.masks.transposable_mask`,
     ``method="exact"``), so the whole mask is transposable;
   * unstructured: within each 128-column block, prune the ``sparsity`` fraction with the smallest
     scores (the reference's per-block threshold);

   then, column by column, ``err = (w - q) / U_cc`` (``q``: w with the pruned entries zeroed) and
   ``W[:, c:] -= err ⊗ U[c, c:]``.

Source zeros (``src_nonzero``): an entry that is zero in the source is pruned before any non-zero
of its group is; the scores only order entries of the same kind. When the pattern must keep more
entries than a group has non-zeros (a 2:4 group with one non-zero, or a transposable tile row
with fewer than ``n``), the kept source zeros are ordinary kept weights: the OBS update may make
them non-zero (the report counts them as ``created_nonzero``). Every other source zero stays an
exact zero. Without ``src_nonzero`` (a dense layer), all entries compete on their scores.
"""
from __future__ import annotations

import math

import torch

from ..masks import nm_mask, transposable_mask
from ..pruning.patterns import NMPattern, TransposableNMPattern, UnstructuredPattern

BLOCKSIZE = 128


def check_pattern(pattern) -> None:
    if not isinstance(pattern, (NMPattern, TransposableNMPattern, UnstructuredPattern)):
        raise ValueError(f"pattern: expected an NMPattern, TransposableNMPattern or UnstructuredPattern, "
                         f"got {type(pattern).__name__} {pattern!r}")


def check_gram(weight: torch.Tensor, h: torch.Tensor, name: str) -> None:
    if weight.dim() != 2:
        raise ValueError(f"{name}: expected a 2-D weight [out, in], got shape {list(weight.shape)}")
    if h.shape != (weight.shape[1], weight.shape[1]):
        raise ValueError(f"{name}: expected H of shape [{weight.shape[1]}, {weight.shape[1]}] (in x in), "
                         f"got {list(h.shape)}")
    if not bool(torch.isfinite(h).all()):
        raise ValueError(f"{name}: H = X^T X of the calibration inputs has NaN/Inf entries")


def priority_key(score: torch.Tensor, nonzero: torch.Tensor | None, big: float) -> torch.Tensor:
    """float64 selection key: ``score`` scaled into [0, 1], plus ``big`` where the source is non-zero.

    With ``big`` larger than the most that scores can add up to in one selection (``m*m`` kept
    entries of a tile: ``big = m*m + 1``), every selection first keeps as many source non-zeros
    as the pattern allows and only then orders by score. Scaling by one positive factor per call
    never changes which mask a selection picks.
    """
    s = score.double()
    top = float(s.max()) if s.numel() else 0.0
    if top > 0 and math.isfinite(top):
        s = s / top
    if nonzero is None:
        return s
    return s + nonzero.double() * big


def select_group(key: torch.Tensor, pattern) -> torch.Tensor:
    """Kept mask ``[rows, m]`` of one group of m columns from its key (N:M or transposable N:M)."""
    if pattern.transposable:
        return transposable_mask(key, pattern.n, pattern.m, method="exact")
    return nm_mask(key, pattern.n, pattern.m)


def select_unstructured(key: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Kept mask of a block: the ``round(sparsity * numel)`` smallest keys pruned (stable: ties prune
    the lower flat index first)."""
    return UnstructuredPattern(sparsity).mask(key)


def inverse_hessian_factor(h: torch.Tensor, damp: float, name: str = "weight"
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(U, dead)``: the upper Cholesky factor ``[in, in]`` fp32 of ``(H + damping)^-1`` and the
    bool ``[in]`` mask of dead input features (``H_jj == 0``).

    Raises ``ValueError`` naming the layer when H is zero (every calibration input is zero) or
    still not positive definite after damping (``damp`` too small for a rank-deficient H).
    """
    if isinstance(damp, bool) or not isinstance(damp, (int, float)) or not damp >= 0 or not math.isfinite(damp):
        raise ValueError(f"damp: expected a number >= 0 (fraction of mean(diag H)), got {damp!r}")
    h = h.double().clone()
    diag = h.diagonal()
    dead = diag == 0
    if bool(dead.all()):
        raise ValueError(f"{name}: H = X^T X is singular even after damping: every input feature of this layer is "
                         f"zero on all calibration tokens (give other calibration text: --calibration-file)")
    diag[dead] = 1.0
    diag += damp * float(diag.mean())
    chol, info = torch.linalg.cholesky_ex(h)
    if int(info) != 0:
        raise ValueError(f"{name}: H = X^T X of the calibration inputs is singular even after damping "
                         f"(damp={damp}, {int((~dead).sum())} live input features): increase the damping "
                         f"(damp, --damp) or use more calibration samples (--calibration-samples)")
    hinv = torch.cholesky_inverse(chol)
    upper, info = torch.linalg.cholesky_ex(hinv, upper=True)
    if int(info) != 0:
        raise ValueError(f"{name}: H^-1 is numerically not positive definite after damping (damp={damp}): "
                         f"increase the damping (damp, --damp)")
    return upper.float(), dead


@torch.no_grad()
def sparsegpt_prune(weight: torch.Tensor, h: torch.Tensor, pattern, *, damp: float = 0.01,
                    blocksize: int = BLOCKSIZE, src_nonzero: torch.Tensor | None = None,
                    name: str = "weight") -> tuple[torch.Tensor, torch.Tensor]:
    """Prune ``weight`` to ``pattern`` with SparseGPT (module docstring).

    Args:
        weight: ``[out, in]`` float weight (any float dtype; computed in fp32).
        h: ``[in, in]`` ``X^T X`` of the layer's calibration inputs (any positive scale), fp32/fp64.
        pattern: ``NMPattern``, ``TransposableNMPattern`` or ``UnstructuredPattern``.
        damp: damping as a fraction of ``mean(diag H)`` (>= 0).
        blocksize: columns per lazy-update block (rounded down to a multiple of m, at least m).
        src_nonzero: ``[out, in]`` bool, the source's non-zeros (kept in preference; see the
            module docstring), or None for a dense layer.

    Returns:
        ``(new_weight [out, in] fp32, kept mask [out, in] bool)``; the new weight is exactly 0
        outside the mask and the mask is valid for ``pattern``.
    """
    check_pattern(pattern)
    check_gram(weight, h, name)
    if isinstance(blocksize, bool) or not isinstance(blocksize, int) or blocksize < 1:
        raise ValueError(f"blocksize: expected an int >= 1, got {blocksize!r}")
    why = pattern.fits(tuple(weight.shape))
    if why is not None:
        raise ValueError(f"{name}: {why}")
    if not bool(torch.isfinite(weight).all()):
        raise ValueError(f"{name}: weight has NaN/Inf entries")
    u, dead = inverse_hessian_factor(h, damp, name)
    w = weight.detach().float().clone()
    w[:, dead] = 0
    rows, cols = w.shape
    nm = not isinstance(pattern, UnstructuredPattern)
    m = pattern.m if nm else 1
    bs = max(m, blocksize // m * m)
    big = float(m * m + 1) if nm else 2.0
    keep = torch.zeros(rows, cols, dtype=torch.bool)
    for i1 in range(0, cols, bs):
        i2 = min(i1 + bs, cols)
        w1 = w[:, i1:i2].clone()
        err1 = torch.zeros_like(w1)
        u1 = u[i1:i2, i1:i2]
        d1 = u1.diagonal()
        keep1 = keep[:, i1:i2]  # a view: filled in place
        nz1 = None if src_nonzero is None else src_nonzero[:, i1:i2]
        if not nm:
            keep1.copy_(select_unstructured(priority_key(w1 ** 2 / d1 ** 2, nz1, big), pattern.sparsity))
        for i in range(i2 - i1):
            if nm and i % m == 0:
                # The group's mask on the weights as updated by every earlier column.
                score = w1[:, i:i + m] ** 2 / d1[i:i + m] ** 2
                keep1[:, i:i + m] = select_group(priority_key(score, None if nz1 is None else nz1[:, i:i + m], big),
                                                 pattern)
            col = w1[:, i]
            q = torch.where(keep1[:, i], col, torch.zeros((), dtype=col.dtype))
            err = (col - q) / d1[i]
            w1[:, i:] -= err[:, None] * u1[i, i:][None, :]
            w1[:, i] = q  # exactly q (the update gives q up to rounding)
            err1[:, i] = err
        w[:, i1:i2] = w1
        w[:, i2:] -= err1 @ u[i1:i2, i2:]
    w[~keep] = 0
    return w, keep


def obs_column_update(w: torch.Tensor, h: torch.Tensor, col: int, q: torch.Tensor) -> torch.Tensor:
    """Closed-form OBS update of all of W when column ``col`` is fixed to ``q`` (reference for tests).

    ``w`` ``[out, in]``, ``h`` ``[in, in]`` (float64 advised), ``q`` ``[out]``: the minimiser of
    ``sum_rows (v - w) H (v - w)^T`` subject to ``v[:, col] = q`` is
    ``v = w - ((w[:, col] - q) / [H^-1]_cc) ⊗ H^-1[col, :]``.
    """
    hinv = torch.linalg.inv(h)
    delta = (w[:, col] - q) / hinv[col, col]
    return w - delta[:, None] * hinv[col][None, :]
