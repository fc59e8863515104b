"""AdaPrune: after the N:M mask, fit each pruned Linear's output to the dense (source) layer's output.

Per layer, with calibration inputs X ``[T, in]`` captured by forward hooks on the *dense* model
(every layer sees dense inputs, so layers are fitted independently):

1. mask: the same deterministic N:M / transposable mask the plain conversion uses;
2. optional mean shift: add each group's pruned weight sum / n to its n survivors (for 2:4 this is
   the mean of the pruned pair, and it keeps every group's sum);
3. fit ``min ||X W'^T + b' - (X W^T + b)||^2`` over W' supported on the mask (and b'): masked least
   squares on the Gram matrix restricted to each row's survivors (``"lstsq"``: conjugate gradients
   for all rows at once; ``"lstsq-exact"``: one Cholesky per row) or Adam (``"adam"``: re-masked
   after each step).

Only the Gram matrix ``G = [X 1]^T [X 1]`` (float64, ``[in+1, in+1]``) of each distinct layer input is
kept, never the activations, so memory is independent of the number of calibration tokens.
The objective for row ``i`` is ``(v_i - v0_i)^T G (v_i - v0_i)``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from ..pruning.patterns import NMPattern, TransposableNMPattern
from .prune import prune_tensor
from .report import LayerCalibration
from .sources import Source
from .targets import TargetFilter

log = logging.getLogger(__name__)

FITS = ("lstsq", "lstsq-exact", "adam", "none")


@dataclass
class AdaPruneConfig:
    """Calibration settings.

    ``fit``: ``"lstsq"`` (masked least squares by conjugate gradients, at most ``cg_iters``
    iterations), ``"lstsq-exact"`` (one damped Cholesky solve per output row: exact, slower on
    CPU), ``"adam"`` (``steps`` Adam steps, ``lr`` relative to the layer's mean kept |w|,
    re-masked after each step) or ``"none"`` (mask and optional mean shift only).
    ``damp``: ridge λ as a fraction of the mean Gram diagonal. Calibration text: ``num_texts``
    texts, each truncated to ``max_length`` tokens.
    """
    fit: str = "lstsq"
    add_pruned_mean: bool = False
    fit_bias: bool = True
    num_texts: int = 64
    max_length: int = 128
    batch_size: int = 16
    damp: float = 0.01
    cg_iters: int = 50
    steps: int = 100
    lr: float = 0.01
    rows_per_solve: int = 64

    def __post_init__(self):
        if self.fit not in FITS:
            raise ValueError(f"fit: expected one of {', '.join(FITS)}, got {self.fit!r}")
        for name in ("num_texts", "max_length", "batch_size", "cg_iters", "steps", "rows_per_solve"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}: expected an int >= 1, got {v!r}")
        for name in ("damp", "lr"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
                raise ValueError(f"{name}: expected a number > 0, got {v!r}")


class GramCollector:
    """Forward hooks accumulating ``[x 1]^T [x 1]`` (float64) over non-padding tokens of chosen Linears.

    Modules fed the very same input tensor (e.g. query/key/value) share the first one's accumulator.
    """

    def __init__(self, modules: dict[str, torch.nn.Module]):
        self.grams: dict[str, torch.Tensor] = {}
        self.key_of: dict[str, str] = {}
        self.tokens = 0
        self._keep: torch.Tensor | None = None
        self._seen: dict[int, tuple[torch.Tensor, str]] = {}
        self._handles = [mod.register_forward_hook(self._hook(fqn)) for fqn, mod in modules.items()]

    def _hook(self, fqn: str):
        def hook(module, inputs, output):
            x = inputs[0]  # identity matters (detach() would make a new object per hook)
            key = self.key_of.get(fqn)
            if key is None:
                seen = self._seen.get(id(x))
                key = seen[1] if seen is not None and seen[0] is x else fqn
                self.key_of[fqn] = key
            if key != fqn:  # same input as an earlier module: its accumulator already has it
                return
            self._seen[id(x)] = (x, fqn)
            flat = x.detach().reshape(-1, x.shape[-1]).float()
            if self._keep is not None and self._keep.numel() == flat.shape[0]:
                flat = flat[self._keep]
            flat = torch.cat([flat, flat.new_ones(flat.shape[0], 1)], 1)
            g = (flat.t() @ flat).double()
            acc = self.grams.get(fqn)
            self.grams[fqn] = g if acc is None else acc.add_(g)
        return hook

    def batch(self, attention_mask: torch.Tensor):
        """Call before each forward: which token positions are real (not padding)."""
        self._keep = attention_mask.reshape(-1).bool()
        self._seen = {}
        self.tokens += int(self._keep.sum())

    def gram(self, fqn: str, with_ones: bool) -> torch.Tensor:
        """``[in+1, in+1]`` (``with_ones``) or ``[in, in]`` float64 Gram of ``fqn``'s input."""
        g = self.grams[self.key_of[fqn]]
        return g if with_ones else g[:-1, :-1]

    def close(self):
        for h in self._handles:
            h.remove()
        self._seen = {}


def relative_error(v: torch.Tensor, v0: torch.Tensor, g: torch.Tensor) -> float:
    """``||[X 1](v - v0)^T|| / ||[X 1] v0^T||`` from the Gram ``g`` (all float64)."""
    d = v - v0
    num = float(((d @ g) * d).sum())
    den = float(((v0 @ g) * v0).sum())
    return (max(num, 0.0) / den) ** 0.5 if den > 0 else 0.0


def mean_shift(w: torch.Tensor, mask: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Add each m-group's pruned sum / n to its survivors; ``w``, ``mask`` ``[out, in]``."""
    out, cols = w.shape
    wg, mg = w.reshape(out, cols // m, m), mask.reshape(out, cols // m, m)
    shift = (wg * ~mg).sum(-1, keepdim=True) / n
    return ((wg + shift) * mg).reshape(out, cols)


def lstsq_fit(v0: torch.Tensor, support: torch.Tensor, pruned: torch.Tensor, g: torch.Tensor, damp: float,
              rows_per_solve: int) -> torch.Tensor:
    """Exact masked least squares, row by row, on the Gram matrix.

    Args:
        v0: ``[out, k]`` float64 dense parameters (weights, then the bias column if any).
        support: ``[out, k]`` bool, entries free to change (kept weights, the bias if fitted).
        pruned: ``[out, k]`` bool, entries forced to zero; entries in neither stay at ``v0``.
        g: ``[k, k]`` float64 Gram matrix.

    Returns ``[out, k]`` float64: ``v0`` on fixed entries, 0 on pruned ones and, on the support,
    ``v0 + (G_SS + λI)^{-1} (G (v0 ⊙ pruned))_S`` with ``λ = damp · mean(diag G)``.
    """
    out, k = v0.shape
    counts = support.sum(1)
    lam = damp * float(g.diagonal().mean()) if float(g.diagonal().mean()) > 0 else damp
    gd = (g + lam * torch.eye(k, dtype=g.dtype)).float()
    r = ((v0 * pruned) @ g).float()
    v = torch.where(pruned, torch.zeros_like(v0), v0)
    for lo in range(0, out, rows_per_solve):
        rows = torch.arange(lo, min(lo + rows_per_solve, out))
        # Row supports have equal sizes for N:M masks; group rows by size to stay general.
        for size in counts[rows].unique().tolist():
            sel = rows[counts[rows] == size]
            if size == 0:
                continue
            idx = support[sel].nonzero()[:, 1].view(len(sel), size)
            gs = gd[idx[:, :, None], idx[:, None, :]]
            rhs = r[sel].gather(1, idx).unsqueeze(-1)
            chol, info = torch.linalg.cholesky_ex(gs)
            if bool((info != 0).any()):
                sol = torch.linalg.lstsq(gs.double(), rhs.double()).solution.float()
            else:
                sol = torch.cholesky_solve(rhs, chol)
            v[sel] = v[sel].scatter(1, idx, v0[sel].gather(1, idx) + sol.squeeze(-1).double())
    return v


def cg_fit(v0: torch.Tensor, support: torch.Tensor, pruned: torch.Tensor, g: torch.Tensor, damp: float,
           iters: int, tol: float = 1e-4) -> torch.Tensor:
    """Masked least squares for all rows at once by Jacobi-preconditioned conjugate gradients.

    Solves the same damped system as :func:`lstsq_fit` (``(G_SS + λI) d_S = (G (v0 ⊙ pruned))_S``
    for every row) with one ``[out, k] x [k, k]`` matmul per iteration instead of one Cholesky per
    row: batched small factorisations are slow on CPU, matmuls are not. Stops after ``iters``
    iterations or when every row's residual is below ``tol`` relative to its right-hand side.
    Shapes and dtypes as in :func:`lstsq_fit`.
    """
    lam = damp * float(g.diagonal().mean()) if float(g.diagonal().mean()) > 0 else damp
    gd = (g + lam * torch.eye(g.shape[0], dtype=g.dtype)).float()
    sf = support.float()
    inv_diag = 1.0 / gd.diagonal()
    r = ((v0 * pruned) @ g).float().mul_(sf)
    x = torch.zeros_like(r)
    z = r * inv_diag
    p = z.clone()
    ap, tmp = torch.empty_like(r), torch.empty_like(r)
    rz = torch.mul(r, z, out=tmp).sum(1, keepdim=True)
    limit = (tol * r.norm(dim=1, keepdim=True)).clamp_min(1e-30)
    # In-place updates into preallocated [out, k] buffers: on VMs where fresh pages are expensive,
    # allocating a few temporaries per iteration costs more than the matmul.
    for _ in range(iters):
        torch.mm(p, gd, out=ap).mul_(sf)
        alpha = rz / torch.mul(p, ap, out=tmp).sum(1, keepdim=True).clamp_min(1e-30)
        x.addcmul_(p, alpha)
        r.addcmul_(ap, alpha, value=-1.0)
        if bool((r.norm(dim=1, keepdim=True) <= limit).all()):
            break
        torch.mul(r, inv_diag, out=z)
        rz_new = torch.mul(r, z, out=tmp).sum(1, keepdim=True)
        p.mul_(rz_new / rz.clamp_min(1e-30)).add_(z)
        rz = rz_new
    v = torch.where(pruned, torch.zeros_like(v0), v0)
    return v.add_(x.mul_(sf).double())


def adam_fit(init: torch.Tensor, v0: torch.Tensor, keep: torch.Tensor, g: torch.Tensor, steps: int,
             lr: float) -> torch.Tensor:
    """Adam on ``Σ_i (v_i - v0_i)^T G (v_i - v0_i)`` (normalised), re-masked after every step."""
    g32, v0_32 = g.float(), v0.float()
    den = float(((v0 @ g) * v0).sum()) or 1.0
    v = torch.nn.Parameter(init.float().clone())
    opt = torch.optim.Adam([v], lr=lr)
    keep32 = keep.float()
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        d = v - v0_32
        loss = ((d @ g32) * d).sum() / den
        loss.backward()
        opt.step()
        with torch.no_grad():
            v.mul_(keep32)
    return v.detach().double()


def _default_texts(num: int) -> list[str]:
    from ..data import load_bbc_news

    return load_bbc_news().train_texts[:num]


def _match_modules(model, file_tensors: dict[str, tuple[torch.dtype, tuple[int, ...]]], targets: TargetFilter,
                   pattern: NMPattern | TransposableNMPattern) -> dict[str, tuple[torch.nn.Linear, str]]:
    """``fqn -> (Linear, file key of its weight)`` for every Linear whose weight is a conversion target."""
    prefix = getattr(model, "base_model_prefix", "") or ""
    out = {}
    for fqn, mod in model.named_modules():
        if not isinstance(mod, torch.nn.Linear):
            continue
        for key in (f"{fqn}.weight", f"{prefix}.{fqn}.weight"):
            meta = file_tensors.get(key)
            if meta is None:
                continue
            if targets.wanted(key, *meta) and pattern.fits(meta[1]) is None \
                    and tuple(mod.weight.shape) == tuple(meta[1]):
                out[fqn] = (mod, key)
            break
    return out


@torch.no_grad()
def _collect(model, tokenizer, texts: list[str], cfg: AdaPruneConfig, collector: GramCollector) -> None:
    from tqdm import tqdm

    for lo in tqdm(range(0, len(texts), cfg.batch_size), desc="calibration forward", leave=False,
                   disable=not log.isEnabledFor(logging.INFO)):
        enc = tokenizer(texts[lo:lo + cfg.batch_size], padding=True, truncation=True, max_length=cfg.max_length,
                        return_tensors="pt")
        collector.batch(enc["attention_mask"])
        model(**enc)


def fit_layer(mod: torch.nn.Linear, key: str, g1: torch.Tensor, tokens: int,
              pattern: NMPattern | TransposableNMPattern, cfg: AdaPruneConfig,
              file_tensors: dict[str, tuple[torch.dtype, tuple[int, ...]]], mask: torch.Tensor | None = None
              ) -> tuple[dict[str, torch.Tensor], torch.Tensor, LayerCalibration]:
    """AdaPrune one Linear whose weight is the file tensor ``key``.

    ``g1``: ``[in+1, in+1]`` float64 Gram ``[X 1]^T [X 1]`` of its calibration inputs (summed over
    ``tokens``). Returns ``(overrides, mask, result)``: the fitted weight (in the file's dtype, zero
    outside ``mask``) and refitted bias under their file names, the kept mask ``[out, in]`` bool,
    and the layer's relative output errors. ``mask``: fit on this kept mask ``[out, in]`` bool
    instead of the magnitude mask (another method's, e.g. SparseGPT's with ``refit``).
    """
    file_dtype = file_tensors[key][0]
    w = mod.weight.detach().to(file_dtype)
    if mask is None:
        _, mask, _ = prune_tensor(w, pattern, name=key)
    w0 = mod.weight.detach().double()
    out_f, in_f = w0.shape
    has_bias = mod.bias is not None
    bias_key = key[: -len("weight")] + "bias"
    fit_bias = has_bias and cfg.fit_bias and bias_key in file_tensors
    v0 = torch.cat([w0, mod.bias.detach().double()[:, None]], 1) if has_bias else w0
    extra = torch.zeros(out_f, 1, dtype=torch.bool)
    support = torch.cat([mask, extra | fit_bias], 1) if has_bias else mask
    pruned = torch.cat([~mask, extra], 1) if has_bias else ~mask
    keep = torch.cat([mask, extra | True], 1) if has_bias else mask
    g = (g1 if has_bias else g1[:-1, :-1]) / max(tokens, 1)
    masked = torch.where(pruned, torch.zeros_like(v0), v0)
    err_before = relative_error(masked, v0, g)
    init = masked
    if cfg.add_pruned_mean:
        shifted = mean_shift(w0, mask, pattern.n, pattern.m)
        init = torch.cat([shifted, v0[:, in_f:]], 1) if has_bias else shifted
    if cfg.fit == "lstsq":
        v = cg_fit(v0, support, pruned, g, cfg.damp, cfg.cg_iters)
    elif cfg.fit == "lstsq-exact":
        v = lstsq_fit(v0, support, pruned, g, cfg.damp, cfg.rows_per_solve)
    elif cfg.fit == "adam":
        lr = cfg.lr * float(w0[mask].abs().mean() or 1.0)
        v = adam_fit(init, v0, keep, g, cfg.steps, lr)
        if not fit_bias and has_bias:
            v[:, in_f] = v0[:, in_f]
    else:
        v = init
    err_after = relative_error(v, v0, g)
    overrides = {key: torch.where(mask, v[:, :in_f].to(file_dtype), torch.zeros((), dtype=file_dtype))}
    if fit_bias:
        overrides[bias_key] = v[:, in_f].to(file_tensors[bias_key][0])
    result = LayerCalibration(name=key, error_before=err_before, error_after=err_after, tokens=tokens,
                              bias_updated=bool(fit_bias), method="adaprune")
    return overrides, mask, result


def calibrate_hf_folder(source: Source, pattern: NMPattern | TransposableNMPattern, targets: TargetFilter,
                        cfg: AdaPruneConfig, texts: list[str] | None = None, sequential: bool = False
                        ) -> tuple[dict[str, torch.Tensor], list[LayerCalibration]]:
    """Run AdaPrune on the HF model folder ``source.root`` for an N:M (or transposable) ``pattern``.

    Returns ``(overrides, per-layer results)``: ``overrides`` maps file tensor names to the fitted
    weights (already zero outside the mask, in the file's dtype) and refitted biases. (The
    conversion calls :func:`sparse.convert.calibration.calibrate_hf_folder`, which also returns
    the masks and runs the other methods.)
    """
    from .calibration import calibrate_hf_folder as run

    overrides, _, results = run(source, pattern, targets, "adaprune", cfg, texts, sequential=sequential)
    return overrides, results
