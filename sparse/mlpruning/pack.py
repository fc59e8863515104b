"""Real surgery: pruned heads, rows and columns removed, pruned blocks as ``BlockSparseLinear``.

What each level removes physically (the residual width never changes):

* **heads**: ``head_dim`` rows of Q, K and V per pruned head (and their biases) and the matching
  columns of the attention-output matrix; the attention module's head count follows. A layer whose heads
  are all pruned loses its attention: the attention module becomes :class:`HeadlessAttention` (no Q, K,
  V, no softmax) and the attention-output matrix has no input columns, so the attention block adds
  exactly that matrix's bias to the residual (``LayerNorm(x + bias)``).
* **rows**, as in the paper (O, FC1 and FC2 rows):
  - ``ffn_in``: FFN intermediate neurons: rows of FC1 (and biases) and the matching columns of FC2;
  - ``attn_out`` / ``ffn_out``: output rows of the attention-output / FFN-output matrix. Those rows are
    residual channels, which cannot go, so the matrix keeps only its kept rows and
    :class:`RowPrunedLinear` writes them into a zero tensor of the full width (``index_copy``): the
    block then adds nothing to the pruned channels, exactly as the masked model does (its pruned rows
    and their biases are zero).
* **blocks**: a matrix with pruned blocks becomes :class:`sparse.nn.BlockSparseLinear` when its block
  is square (16, 32, 64 or 128) and the blocks still tile it after the row/column removal above
  (two stages: blocks on an already packed head/row model, with ``row_multiple`` a multiple of the
  block). Otherwise the matrix stays a dense ``nn.Linear`` with the pruned blocks zeroed, and the
  report says so.

Outputs equal the masked model's (fp32 tolerance); :func:`pack_layer` does one layer and returns its
record for the packed config (``config.mlpruning``, read back by :func:`sparse.mlpruning.load_packed`).
"""
from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn as nn
from torch.nn.utils import skip_init

from ..nn.block_sparse import BlockSparseLinear
from ..ops.layout import BLOCK_SIZES
from .families import Family, get_module, set_module

__all__ = ["RowPrunedLinear", "HeadlessAttention", "MatrixView", "matrix_views", "layer_heads", "LayerPlan",
           "pack_layer", "layer_record", "rebuild_layer", "encoder_weight_count",
           "matrix_weight_count"]

log = logging.getLogger(__name__)


# Matrices whose output rows are residual channels: their pruned rows are scattered back as zeros.
SCATTERED = ("attn_out", "ffn_out")


class RowPrunedLinear(nn.Module):
    """A Linear that computes only its kept output rows and scatters them into the full width.

    Args:
        linear: the kept rows, ``nn.Linear`` or ``BlockSparseLinear`` with ``out_features = len(index)``.
        index: ``int64 [kept]``, ascending: the output channel of each kept row.
        out_features: the full output width.

    Input ``x [..., in_features]``; output ``[..., out_features]``, zeros in the pruned channels.
    """

    def __init__(self, linear: nn.Module, index: torch.Tensor, out_features: int):
        super().__init__()
        if index.dim() != 1 or index.numel() != linear.out_features:
            raise ValueError(f"index: expected {linear.out_features} output channels, got shape {tuple(index.shape)}")
        self.linear = linear
        self.in_features = linear.in_features
        self.out_features = int(out_features)
        self.register_buffer("index", index.to(torch.int64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.linear(x)
        return y.new_zeros(*y.shape[:-1], self.out_features).index_copy(-1, self.index, y)

    def extra_repr(self) -> str:
        return f"kept rows {self.linear.out_features}/{self.out_features}"


class HeadlessAttention(nn.Module):
    """The attention of a layer whose heads were all pruned.

    Returns ``(context, None)`` like the attention modules it replaces, where ``context`` is
    ``[..., 0]`` (no heads), or, for families whose attention-output matrix lives inside the attention
    module (DistilBERT), that matrix applied to it: its bias broadcast to ``[..., hidden]``. The output
    matrix keeps its family name (``out_name``), so state-dict keys do not change.
    """

    def __init__(self, out_proj: nn.Module | None = None, out_name: str | None = None):
        super().__init__()
        if (out_proj is None) != (out_name is None):
            raise ValueError("out_name: expected a name exactly when out_proj is given")
        self.out_name = out_name
        if out_proj is not None:
            self.add_module(out_name, out_proj)

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        context = hidden_states.new_zeros(*hidden_states.shape[:-1], 0)
        if self.out_name is not None:
            context = self._modules[self.out_name](context)
        return context, None

    def extra_repr(self) -> str:
        return "all heads pruned"


@dataclass
class MatrixView:
    """One matrix of a layer as found: the module at the family path, the inner matrix holding the
    weights, and for a :class:`RowPrunedLinear` its output channels."""
    role: str
    module: nn.Module
    linear: nn.Module
    index: torch.Tensor | None
    out_full: int

    @property
    def rows(self) -> int:
        return int(self.linear.out_features)

    @property
    def cols(self) -> int:
        return int(self.linear.in_features)


def matrix_views(layer: nn.Module, family: Family) -> dict[str, MatrixView]:
    """The layer's matrices by role; absent ones (Q, K, V of a headless layer) are left out."""
    views = {}
    for role, path in family.matrices.items():
        mod = get_module(layer, path)
        if mod is None:
            continue
        if isinstance(mod, RowPrunedLinear):
            views[role] = MatrixView(role, mod, mod.linear, mod.index, mod.out_features)
        else:
            views[role] = MatrixView(role, mod, mod, None, int(getattr(mod, "out_features", 0)))
    return views


def layer_heads(layer: nn.Module, family: Family, head_dim: int) -> int:
    """Number of attention heads the layer has now (0 when headless)."""
    if isinstance(get_module(layer, family.attention), HeadlessAttention):
        return 0
    q = get_module(layer, family.matrices["query"])
    return int(q.out_features) // head_dim


def matrix_weight_count(module: nn.Module | None) -> int:
    """Stored weights of one matrix module (biases excluded; ``BlockSparseLinear``: kept blocks only)."""
    if module is None:
        return 0
    if isinstance(module, RowPrunedLinear):
        module = module.linear
    if isinstance(module, BlockSparseLinear):
        return int(module.weight_data.numel())
    w = getattr(module, "weight", None)
    return int(w.numel()) if isinstance(w, torch.Tensor) else 0


def encoder_weight_count(layers: nn.ModuleList, family: Family) -> int:
    """Stored Linear weights of the encoder (the six matrices of every layer)."""
    return sum(matrix_weight_count(get_module(layer, path)) for layer in layers for path in family.matrices.values())


@dataclass
class LayerPlan:
    """What to keep in one layer (indices ascending, on the weights' device).

    ``heads``: kept head indices (None: all); ``rows``: role -> kept rows of ``attn_out`` / ``ffn_in`` /
    ``ffn_out`` (absent: all); ``blocks``: role -> bool element mask of the current matrix (absent: no
    block level); ``block``: the (R, C) block the masks were made with.
    """
    heads: torch.Tensor | None = None
    rows: dict[str, torch.Tensor] = field(default_factory=dict)
    blocks: dict[str, torch.Tensor] = field(default_factory=dict)
    block: tuple[int, int] = (32, 32)


def _select(t: torch.Tensor | None, rows: torch.Tensor | None, cols: torch.Tensor | None) -> torch.Tensor | None:
    if t is None:
        return None
    if rows is not None:
        t = t.index_select(0, rows)
    if cols is not None and t.dim() == 2:
        t = t.index_select(1, cols)
    return t


def _is_block_structured(mask: torch.Tensor, b: int) -> bool:
    r, c = mask.shape
    if r % b or c % b:
        return False
    blocks = mask.reshape(r // b, b, c // b, b)
    return bool((blocks.all(dim=(1, 3)) == blocks.any(dim=(1, 3))).all())


def _new_linear(cols: int, rows: int, bias: bool, device=None, dtype=None) -> nn.Linear:
    """An uninitialised Linear (the caller fills it); a headless layer's output matrix has 0 columns."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Initializing zero-element tensors")
        return skip_init(nn.Linear, cols, rows, bias=bias, device=device if device is not None else "cpu",
                         dtype=dtype)


def _dense(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    lin = _new_linear(weight.shape[1], weight.shape[0], bias is not None, weight.device, weight.dtype)
    with torch.no_grad():
        lin.weight.copy_(weight)
        if bias is not None:
            lin.bias.copy_(bias)
    return lin


def _matrix(weight: torch.Tensor, bias: torch.Tensor | None, mask: torch.Tensor | None, block: tuple[int, int],
            where: str, notes: list[str]) -> nn.Module:
    """A dense Linear, or a BlockSparseLinear when ``mask`` prunes blocks that the block kernel can take."""
    if mask is None or mask.numel() == 0 or bool(mask.all()):
        return _dense(weight, bias)
    weight = weight * mask.to(weight.dtype)
    lin = _dense(weight, bias)
    b = block[0]
    if block[0] == block[1] and b in BLOCK_SIZES and _is_block_structured(mask, b):
        r, c = mask.shape
        return BlockSparseLinear.from_dense(lin, mask.reshape(r // b, b, c // b, b).any(dim=(1, 3)))
    why = (f"block {block[0]}x{block[1]} is not one of the square block-kernel sizes {BLOCK_SIZES}"
           if not (block[0] == block[1] and b in BLOCK_SIZES)
           else f"its pruned blocks no longer tile the packed {tuple(mask.shape)} matrix (rows or columns were "
                f"removed in the same stage; prune blocks in a second stage on the packed model)")
    notes.append(f"{where}: kept as a dense Linear with pruned blocks zeroed: {why}")
    log.warning(notes[-1])
    return lin


def _shrink(view: MatrixView, rows: torch.Tensor | None, cols: torch.Tensor | None, mask: torch.Tensor | None,
            block: tuple[int, int], where: str, notes: list[str]) -> nn.Module:
    """The matrix with ``rows`` / ``cols`` kept and ``mask`` applied. Removed rows of a residual-writing
    matrix (``attn_out``, ``ffn_out``) are scattered back to the full width; removed rows of the others
    shrink their output, which the next matrix's column removal matches."""
    lin = view.linear
    if not isinstance(lin, nn.Linear):
        raise ValueError(f"model: {where} is a {type(lin).__name__}; packing takes nn.Linear matrices")
    weight = _select(lin.weight.detach(), rows, cols)
    bias = _select(lin.bias.detach() if lin.bias is not None else None, rows, None)
    inner = _matrix(weight, bias, _select(mask, rows, cols), block, where, notes)
    index = view.index
    if rows is not None and view.role in SCATTERED:
        index = index.index_select(0, rows) if index is not None else rows
    if index is None or index.numel() == view.out_full:
        return inner  # every output channel kept: no scatter
    return RowPrunedLinear(inner, index.to(torch.int64), view.out_full)


def _head_rows(heads: torch.Tensor, head_dim: int) -> torch.Tensor:
    offsets = torch.arange(head_dim, device=heads.device)
    return (heads.to(torch.int64)[:, None] * head_dim + offsets).reshape(-1)


def pack_layer(layer: nn.Module, family: Family, plan: LayerPlan, head_dim: int, where: str,
               notes: list[str]) -> dict:
    """Apply ``plan`` to ``layer`` in place; returns the layer's record (see :func:`layer_record`)."""
    views = matrix_views(layer, family)
    head_rows = None if plan.heads is None else _head_rows(plan.heads, head_dim)
    ffn_rows = plan.rows.get("ffn_in")
    select = {"query": (head_rows, None), "key": (head_rows, None), "value": (head_rows, None),
              "attn_out": (plan.rows.get("attn_out"), head_rows), "ffn_in": (ffn_rows, None),
              "ffn_out": (plan.rows.get("ffn_out"), ffn_rows)}
    new = {role: _shrink(v, *select[role], plan.blocks.get(role), plan.block, f"{where}{family.matrices[role]}", notes)
           for role, v in views.items()}
    headless = isinstance(get_module(layer, family.attention), HeadlessAttention) or (
        plan.heads is not None and plan.heads.numel() == 0)
    if headless:
        if not isinstance(get_module(layer, family.attention), HeadlessAttention):
            notes.append(f"{where.rstrip('.')}: all attention heads pruned: attention removed, the block adds the "
                         f"attention-output bias only")
            log.info(notes[-1])
    install_layer(layer, family, new, 0 if headless else int(new["query"].out_features) // head_dim)
    return layer_record(layer, family, head_dim)


def install_layer(layer: nn.Module, family: Family, new: dict[str, nn.Module], heads: int) -> None:
    """Put the packed matrices ``new`` (role -> module) into ``layer`` with ``heads`` attention heads; with
    0 heads the attention module becomes a :class:`HeadlessAttention` (bias-only output)."""
    if heads == 0:
        if family.out_in_attention:
            set_module(layer, family.attention, HeadlessAttention(new["attn_out"], family.out_leaf()))
        else:
            set_module(layer, family.attention, HeadlessAttention())
            set_module(layer, family.matrices["attn_out"], new["attn_out"])
        for role in ("ffn_in", "ffn_out"):
            set_module(layer, family.matrices[role], new[role])
    else:
        for role, mod in new.items():
            set_module(layer, family.matrices[role], mod)
        setattr(get_module(layer, family.attention), family.heads_attr, heads)


def layer_record(layer: nn.Module, family: Family, head_dim: int) -> dict:
    """Shapes of a (packed) layer, enough to rebuild it: ``heads``, ``intermediate_size`` and per
    matrix ``in``/``out`` of the stored matrix, ``scatter_to`` (full width of a ``RowPrunedLinear``, else
    None) and ``block`` (block size of a ``BlockSparseLinear``, else None)."""
    views = matrix_views(layer, family)
    mats = {}
    for role, v in views.items():
        mats[role] = {"in": v.cols, "out": v.rows, "scatter_to": v.out_full if v.index is not None else None,
                      "block": int(v.linear.block) if isinstance(v.linear, BlockSparseLinear) else None,
                      "bias": getattr(v.linear, "bias", None) is not None}
    heads = layer_heads(layer, family, head_dim)
    return {"heads": heads, "attention_removed": heads == 0, "intermediate_size": views["ffn_in"].rows,
            "matrices": mats}


def rebuild_layer(layer: nn.Module, family: Family, record: dict, head_dim: int,
                  block_mask_of: Callable[[str, int, int, int, bool], torch.Tensor]) -> None:
    """Give a freshly built layer the shapes of a packed layer's ``record`` (:func:`layer_record`), with
    uninitialised weights (the caller loads them). ``block_mask_of(role, rows, cols, block, scattered)``
    returns the bool ``[rows/block, cols/block]`` block mask of a ``BlockSparseLinear`` matrix."""
    mats = record["matrices"]
    new = {}
    for role, spec in mats.items():
        rows, cols, block, scatter_to = spec["out"], spec["in"], spec["block"], spec["scatter_to"]
        if block:
            inner = BlockSparseLinear(cols, rows, block_mask_of(role, rows, cols, block, scatter_to is not None),
                                      bias=spec["bias"])
        else:
            inner = _new_linear(cols, rows, spec["bias"])
        new[role] = (RowPrunedLinear(inner, torch.zeros(rows, dtype=torch.int64), scatter_to)
                     if scatter_to is not None else inner)
    install_layer(layer, family, new, int(record["heads"]))
