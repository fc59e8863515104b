"""Calibrated conversion of an HF model folder: AdaPrune, SparseGPT or Wanda, sequential or not.

The model is loaded from the folder in fp32 and run on calibration text (BBC News training texts
by default, or the caller's); forward hooks (:class:`sparse.convert.adaprune.GramCollector`)
accumulate each target Linear's ``[X 1]^T [X 1]`` over the non-padding tokens (fp32 products
summed in float64). Then every target layer is solved by its method:

* ``adaprune``: the plain conversion's magnitude mask, then a masked least-squares fit of the
  layer's output (and bias) to the source layer's output (:mod:`sparse.convert.adaprune`);
* ``sparsegpt``: mask chosen inside the OBS column sweep, remaining weights updated
  (:mod:`sparse.convert.sparsegpt`);
* ``wanda``: mask by ``|W_ij| * ||X_j||``, no update (:mod:`sparse.convert.wanda`).

Sequential (the default for HF folders): the model runs block by block
(:mod:`sparse.convert.sequential`); a block's layers are solved on the inputs that the already
pruned earlier blocks produce, written back into the model, and the pruned block's outputs are
the next block's inputs. Within a block, all layers are solved from one pass of the (not yet
pruned) block, as in the SparseGPT reference. Target layers outside the block stack (e.g. a
pooler) are solved last, from one forward of the pruned model. Not sequential: one forward of
the source model, every layer solved on source-model inputs (independently).
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass

import torch

from ..pruning.patterns import NMPattern, TransposableNMPattern
from .adaprune import AdaPruneConfig, GramCollector, _default_texts, _match_modules, fit_layer, relative_error
from .prune import prune_tensor
from .reader import list_tensors
from .report import LayerCalibration
from .sequential import BlockRunner, find_blocks
from .sources import Source
from .targets import TargetFilter

log = logging.getLogger(__name__)

METHODS = ("adaprune", "sparsegpt", "wanda")


@dataclass
class CalibrationConfig:
    """SparseGPT / Wanda settings (AdaPrune has :class:`sparse.convert.adaprune.AdaPruneConfig`).

    ``num_texts`` calibration texts (``--calibration-samples``), each truncated to ``max_length``
    tokens (``--seq-len``), run ``batch_size`` at a time; ``damp``: SparseGPT's damping as a
    fraction of ``mean(diag H)`` (``--damp``, >= 0; 0 only for well-conditioned H);
    ``blocksize``: SparseGPT's lazy-update block (columns). ``refit``: after SparseGPT's or
    Wanda's mask, refit the kept weights and the bias by AdaPrune's masked least squares
    (``--refit``; not part of either paper).
    """
    num_texts: int = 64
    max_length: int = 128
    batch_size: int = 16
    damp: float = 0.01
    blocksize: int = 128
    refit: bool = False

    def __post_init__(self):
        for name, flag in (("num_texts", "--calibration-samples"), ("max_length", "--seq-len"),
                           ("batch_size", None), ("blocksize", None)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                label = f"{name} ({flag})" if flag else name
                raise ValueError(f"{label}: expected an int >= 1, got {v!r}")
        d = self.damp
        if isinstance(d, bool) or not isinstance(d, (int, float)) or not d >= 0 or not math.isfinite(d):
            raise ValueError(f"damp (--damp): expected a number >= 0, got {d!r}")
        if not isinstance(self.refit, bool):
            raise ValueError(f"refit (--refit): expected a bool, got {self.refit!r}")


def resolve_method(calibrate) -> str | None:
    """``calibrate`` argument -> method name or None: False/None (no calibration), True
    (``"adaprune"``, the documented default of a plain ``--calibrate``) or a :data:`METHODS` name."""
    if calibrate is None or calibrate is False:
        return None
    if calibrate is True:
        return "adaprune"
    if isinstance(calibrate, str) and calibrate in METHODS:
        return calibrate
    raise ValueError(f"calibrate (--calibrate): expected one of {', '.join(METHODS)} (or True for adaprune, "
                     f"False for none), got {calibrate!r}")


def config_for(method: str, cfg):
    """The settings object of ``method``: ``cfg`` if it is the right kind; defaults if None; for
    SparseGPT/Wanda an ``AdaPruneConfig`` lends its text settings and damping."""
    if method == "adaprune":
        if cfg is None:
            return AdaPruneConfig()
        if not isinstance(cfg, AdaPruneConfig):
            raise ValueError(f"calibration: expected an AdaPruneConfig for calibrate='adaprune', "
                             f"got {type(cfg).__name__}")
        return cfg
    if cfg is None:
        return CalibrationConfig()
    if isinstance(cfg, CalibrationConfig):
        return cfg
    if isinstance(cfg, AdaPruneConfig):
        return CalibrationConfig(num_texts=cfg.num_texts, max_length=cfg.max_length, batch_size=cfg.batch_size,
                                 damp=cfg.damp)
    raise ValueError(f"calibration: expected a CalibrationConfig (or AdaPruneConfig) for calibrate={method!r}, "
                     f"got {type(cfg).__name__}")


def solve_layer(method: str, mod: torch.nn.Linear, key: str, g1: torch.Tensor, tokens: int, pattern, cfg,
                file_tensors: dict) -> tuple[dict[str, torch.Tensor], torch.Tensor, LayerCalibration]:
    """Solve one Linear (weight file name ``key``) from its ``[in+1, in+1]`` float64 Gram ``g1``.

    Returns ``(overrides, kept mask [out, in] bool, result)``; overrides are in the file's dtypes,
    zero outside the mask. Source zeros: see :mod:`sparse.convert.sparsegpt`.
    """
    if method == "adaprune":
        return fit_layer(mod, key, g1, tokens, pattern, cfg, file_tensors)
    from .sparsegpt import sparsegpt_prune
    from .wanda import wanda_prune

    file_dtype = file_tensors[key][0]
    w = mod.weight.detach().to(file_dtype)  # the file's values (the model was loaded from them)
    w0 = mod.weight.detach().double()
    h = g1[:-1, :-1]
    _, magnitude, _ = prune_tensor(w, pattern, name=key)
    if method == "sparsegpt":
        new, mask = sparsegpt_prune(w0, h, pattern, damp=cfg.damp, blocksize=cfg.blocksize, src_nonzero=w != 0,
                                    name=key)
    else:
        new, mask = wanda_prune(w, h, pattern, src_nonzero=w != 0, name=key)
    # Errors of the layer's whole output, bias included (as AdaPrune's): the bias column is unchanged.
    if mod.bias is not None:
        bias = mod.bias.detach().double()[:, None]
        g, full = g1 / max(tokens, 1), (lambda v: torch.cat([v, bias], 1))
    else:
        g, full = h / max(tokens, 1), (lambda v: v)
    err_before = relative_error(full(torch.where(magnitude, w0, torch.zeros((), dtype=w0.dtype))), full(w0), g)
    if cfg.refit:
        fit_cfg = AdaPruneConfig(damp=cfg.damp if cfg.damp > 0 else AdaPruneConfig.damp)
        out, mask, res = fit_layer(mod, key, g1, tokens, pattern, fit_cfg, file_tensors, mask=mask)
        res.error_before, res.method = err_before, f"{method}+refit"
        return out, mask, res
    new = torch.where(mask, new.to(file_dtype), torch.zeros((), dtype=file_dtype))
    err_after = relative_error(full(new.double()), full(w0), g)
    result = LayerCalibration(name=key, error_before=err_before, error_after=err_after, tokens=tokens,
                              bias_updated=False, method=method)
    return {key: new}, mask, result


def _install(mod: torch.nn.Linear, key: str, overrides: dict[str, torch.Tensor]) -> None:
    """Write a solved layer back into the model, so later blocks see its pruned outputs."""
    with torch.no_grad():
        mod.weight.copy_(overrides[key].to(mod.weight.dtype))
        bias_key = key[: -len("weight")] + "bias"
        if bias_key in overrides and mod.bias is not None:
            mod.bias.copy_(overrides[bias_key].to(mod.bias.dtype))


def calibrate_hf_folder(source: Source, pattern: NMPattern | TransposableNMPattern, targets: TargetFilter,
                        method: str, cfg=None, texts: list[str] | None = None, *, sequential: bool = True,
                        progress: bool = False
                        ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], list[LayerCalibration]]:
    """Calibrate the target Linears of the HF model folder ``source.root`` with ``method``.

    Returns ``(overrides, masks, results)``: file tensor name -> new weight (file dtype, zero outside
    its mask) or refitted bias; weight name -> kept mask ``[out, in]`` bool; per-layer results.
    """
    try:
        from transformers import AutoModel, AutoTokenizer
    except ImportError as exc:
        raise ModuleNotFoundError("calibrate needs transformers: pip install -e '.[hf]'") from exc
    from tqdm import tqdm

    if method not in METHODS:
        raise ValueError(f"calibrate (--calibrate): expected one of {', '.join(METHODS)}, got {method!r}")
    cfg = config_for(method, cfg)
    if texts is None:
        texts = _default_texts(cfg.num_texts)
    texts = [t for t in texts if isinstance(t, str) and t.strip()][:cfg.num_texts]
    if not texts:
        raise ValueError("calibration_texts (--calibration-file): expected at least one non-empty text, got none")
    root = source.root
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    tokenizer = AutoTokenizer.from_pretrained(root)
    model = AutoModel.from_pretrained(root, dtype=torch.float32).eval()
    file_tensors = {name: (dt, shape) for name, dt, shape in list_tensors(source.path)}
    layers = _match_modules(model, file_tensors, targets, pattern)
    if not layers:
        log.warning("calibrate: no Linear of the model matches a conversion target; nothing to calibrate")
        return {}, {}, []
    batches = [tokenizer(texts[lo:lo + cfg.batch_size], padding=True, truncation=True, max_length=cfg.max_length,
                         return_tensors="pt") for lo in range(0, len(texts), cfg.batch_size)]
    overrides: dict[str, torch.Tensor] = {}
    masks: dict[str, torch.Tensor] = {}
    results: list[LayerCalibration] = []

    def solve(fqns: list[str], collector: GramCollector, bar) -> None:
        for fqn in fqns:
            mod, key = layers[fqn]
            if bar is not None:
                bar.set_postfix_str(fqn[-40:], refresh=False)
            out, mask, res = solve_layer(method, mod, key, collector.gram(fqn, True), collector.tokens, pattern,
                                         cfg, file_tensors)
            overrides.update(out)
            masks[key] = mask
            results.append(res)
            _install(mod, key, out)
            log.info("%s (%s): output error %.4f -> %.4f", key, method, res.error_before, res.error_after)

    def collect_full(fqns: list[str]) -> GramCollector:
        collector = GramCollector({fqn: layers[fqn][0] for fqn in fqns})
        try:
            with torch.no_grad():
                for enc in batches:
                    collector.batch(enc["attention_mask"])
                    model(**enc)
        finally:
            collector.close()
        return collector

    found = find_blocks(model, set(layers)) if sequential else None
    if found is None:
        if sequential:
            log.warning("sequential calibration: no block stack (ModuleList) holds the target layers; "
                        "calibrating all layers on the source model's inputs")
        with tqdm(total=1, desc=f"calibrate {method}", disable=not progress, leave=False) as bar:
            solve(list(layers), collect_full(list(layers)), bar)
            bar.update(1)
    else:
        prefix, blocks = found
        prefix = f"{prefix}." if prefix else ""
        runner = BlockRunner(model, blocks, batches)
        rest = set(layers)
        with tqdm(total=len(blocks), desc=f"calibrate {method} (sequential)", unit="block", disable=not progress,
                  leave=False) as bar:
            for i in range(len(blocks)):
                mine = [fqn for fqn in layers if fqn.startswith(f"{prefix}{i}.")]
                if mine:
                    collector = GramCollector({fqn: layers[fqn][0] for fqn in mine})
                    try:
                        runner.run(collector.batch)
                    finally:
                        collector.close()
                    solve(mine, collector, bar)
                    rest -= set(mine)
                if i + 1 < len(blocks):
                    runner.advance()
                bar.update(1)
        del runner
        if rest:  # outside the block stack: one forward of the (pruned) model
            leftover = [fqn for fqn in layers if fqn in rest]
            solve(leftover, collect_full(leftover), None)
    for res in results:
        res.sequential = found is not None
    log.info("calibration (%s%s): %d texts, %d layers", method, ", sequential" if found else "", len(texts),
             len(results))
    return overrides, masks, results
