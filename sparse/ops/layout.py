"""Block-sparse (BSR-like) layout of the block-sparse ops, and the checks of their arguments.

Pure torch. Every backend receives a validated layout; the Triton kernels receive its index tensors.

A sparse matrix S of shape ``[R*B, C*B]`` keeps ``nnz`` dense ``B x B`` blocks, stored as a data
tensor ``[..., nnz, B, B]`` in row-major block order. The layout holds the block-row pointers and
column indices (CSR over blocks) *and* the transpose metadata (CSC over blocks plus the permutation
into the data tensor), so kernels that need S^T (the backward of a linear layer) walk the columns
without converting the data.

Validation (safe and cheap). Index tensors come from files (state dicts, safetensors) and can be
edited in place, so every op checks, before any kernel runs, that its layout is valid: dtypes, shapes,
devices (structure, every call, no data access) and the values (pointers from 0 to nnz, indices in
range, no duplicate blocks, the transpose metadata a permutation describing the same blocks: O(nnz),
one host sync on CUDA). The value check runs once per layout *state*: a layout built by the
constructor is checked there, and :func:`ensure_validated` remembers each checked state by the
identity and ``_version`` of its six tensors, so an unchanged layout costs a few attribute reads per
call and any in-place write (``copy_``, ``load_state_dict``, item assignment) is checked again at the
next call. Writes that bypass version counters (``t.data[...] = v``, numpy views) and inference tensors
(no version counter: checked at every call) cannot fool the kernels either: the C++ kernels range-check
their indices at every call and the Triton kernels clamp every index they load, so a stale "valid"
mark can give wrong numbers but never an access outside the operands.
"""
from __future__ import annotations

import dataclasses
import numbers
import weakref
from dataclasses import dataclass

import numpy as np
import torch

BLOCK_SIZES = (16, 32, 64, 128)


@dataclass(frozen=True)
class BlockLayout:
    """Block-sparse layout of a ``[rows, cols]`` matrix with ``block x block`` blocks.

    Fields (all ``torch.int32`` on one device; R = rows/block, C = cols/block):

    * ``crow`` ``[R+1]``: block-row pointers into ``col`` / the data tensor.
    * ``col`` ``[nnz]``: block-column of each stored block, ascending within a row.
    * ``row`` ``[nnz]``: block-row of each stored block (for SDD, one program per block).
    * ``ccol`` ``[C+1]``: block-column pointers into ``row_t`` / ``perm_t`` (transpose metadata).
    * ``row_t`` ``[nnz]``: block-row of each block in column-major order, ascending within a column.
    * ``perm_t`` ``[nnz]``: index into the data tensor of each block in column-major order.

    The constructor validates everything (use :meth:`from_mask` to build one).
    """

    block: int
    shape: tuple[int, int]
    crow: torch.Tensor
    col: torch.Tensor
    row: torch.Tensor
    ccol: torch.Tensor
    row_t: torch.Tensor
    perm_t: torch.Tensor

    def __post_init__(self):
        object.__setattr__(self, "block", _check_block(self.block))
        _validate(self)
        _remember(self)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_mask(cls, block_mask: torch.Tensor, block: int) -> "BlockLayout":
        """Layout of the True entries of ``block_mask`` (bool ``[R, C]``), blocks of ``block``."""
        check_block_mask(block_mask, "[R, C]")
        block = _check_block(block)
        device = block_mask.device
        m = block_mask.detach().cpu()
        r, c = m.shape
        rows, cols = m.nonzero(as_tuple=True)  # row-major order
        counts_r = m.sum(1)
        crow = torch.zeros(r + 1, dtype=torch.int64)
        crow[1:] = counts_r.cumsum(0)
        # Column-major order of the same blocks; stable sort keeps rows ascending within a column.
        order = torch.sort(cols * max(r, 1) + rows, stable=True).indices
        ccol = torch.zeros(c + 1, dtype=torch.int64)
        ccol[1:] = m.sum(0).cumsum(0)
        i32 = dict(dtype=torch.int32, device=device)
        return cls(block=int(block), shape=(r * block, c * block),
                   crow=crow.to(**i32), col=cols.to(**i32), row=rows.to(**i32),
                   ccol=ccol.to(**i32), row_t=rows[order].to(**i32), perm_t=order.to(**i32))

    # ------------------------------------------------------------------ views
    @property
    def nnz(self) -> int:
        return int(self.col.numel())

    @property
    def block_shape(self) -> tuple[int, int]:
        """``(R, C)``: the shape of the block mask."""
        return self.shape[0] // self.block, self.shape[1] // self.block

    @property
    def device(self) -> torch.device:
        return self.crow.device

    def mask(self) -> torch.Tensor:
        """The block mask, bool ``[R, C]`` on the layout's device."""
        out = torch.zeros(self.block_shape, dtype=torch.bool, device=self.device)
        out[self.row.long(), self.col.long()] = True
        return out

    def to(self, device) -> "BlockLayout":
        try:
            device = torch.device(device)
        except (RuntimeError, TypeError) as exc:
            raise ValueError(f"device: expected a torch.device or a device string, got {device!r} ({exc})") from None
        if device == self.device:
            return self
        return dataclasses.replace(self, **{f: getattr(self, f).to(device) for f in _INDEX_FIELDS})

    def tensors(self) -> tuple[torch.Tensor, ...]:
        """The index tensors in field order (crow, col, row, ccol, row_t, perm_t)."""
        return tuple(getattr(self, f) for f in _INDEX_FIELDS)

    @classmethod
    def from_tensors(cls, block: int, shape, tensors, validate: bool = True) -> "BlockLayout":
        """Layout from the index tensors of :meth:`tensors`.

        ``validate=False`` skips the (host-synchronising) checks here; every op still runs
        :func:`ensure_validated` on the layout before a kernel sees it (a no-op for a state already
        checked), so this only defers the check to the first call.
        """
        shape = _check_shape(shape, "shape")
        tensors = tuple(tensors) if isinstance(tensors, (tuple, list)) else tensors
        if not isinstance(tensors, tuple) or len(tensors) != len(_INDEX_FIELDS):
            got = f"{len(tensors)}" if isinstance(tensors, tuple) else type(tensors).__name__
            raise ValueError(f"tensors: expected the 6 index tensors ({', '.join(_INDEX_FIELDS)}), got {got}")
        if validate:
            return cls(block, shape, *tensors)
        lay = object.__new__(cls)
        for name, value in zip(("block", "shape", *_INDEX_FIELDS), (int(block), shape, *tensors)):
            object.__setattr__(lay, name, value)
        return lay

    def to_dense(self, data: torch.Tensor) -> torch.Tensor:
        """Dense matrix ``[..., rows, cols]`` from block data ``[..., nnz, B, B]`` (zeros elsewhere)."""
        check_data(self, data, "data")
        r, c = self.block_shape
        b = self.block
        lead = data.shape[:-3]
        out = data.new_zeros(*lead, r * c, b, b)
        out[..., (self.row.long() * c + self.col.long()), :, :] = data
        return out.view(*lead, r, c, b, b).transpose(-3, -2).reshape(*lead, r * b, c * b)

    def from_dense(self, dense: torch.Tensor) -> torch.Tensor:
        """Block data ``[..., nnz, B, B]`` of the kept blocks of a dense ``[..., rows, cols]`` tensor."""
        if not isinstance(dense, torch.Tensor):
            raise ValueError(f"dense: expected a tensor [..., {self.shape[0]}, {self.shape[1]}], "
                             f"got {type(dense).__name__}")
        if dense.dim() < 2 or tuple(dense.shape[-2:]) != self.shape:
            raise ValueError(f"dense: expected shape [..., {self.shape[0]}, {self.shape[1]}], "
                             f"got {tuple(dense.shape)}")
        r, c = self.block_shape
        b = self.block
        lead = dense.shape[:-2]
        blocks = dense.reshape(*lead, r, b, c, b).transpose(-3, -2).reshape(*lead, r * c, b, b)
        return blocks[..., (self.row.long() * c + self.col.long()).to(dense.device), :, :].contiguous()


_INDEX_FIELDS = ("crow", "col", "row", "ccol", "row_t", "perm_t")


def _check_block(block) -> int:
    if isinstance(block, (bool, np.bool_)) or not isinstance(block, numbers.Integral) or int(block) not in BLOCK_SIZES:
        raise ValueError(f"block: expected one of {BLOCK_SIZES}, got {block!r}")
    return int(block)


def _check_shape(shape, name: str) -> tuple[int, int]:
    ok = isinstance(shape, (tuple, list, torch.Size)) and len(shape) == 2 and all(
        isinstance(v, numbers.Integral) and not isinstance(v, (bool, np.bool_)) and v >= 0 for v in shape)
    if not ok:
        raise ValueError(f"{name}: expected (rows, cols), two non-negative ints, got {shape!r}")
    return int(shape[0]), int(shape[1])


def check_block_mask(block_mask, dims: str) -> None:
    """A 2-D ``torch.bool`` block mask with data (not meta)."""
    if not isinstance(block_mask, torch.Tensor) or block_mask.dtype != torch.bool or block_mask.dim() != 2:
        got = (f"{block_mask.dtype} tensor of shape {tuple(block_mask.shape)}"
               if isinstance(block_mask, torch.Tensor) else type(block_mask).__name__)
        raise ValueError(f"block_mask: expected a 2-D torch.bool tensor {dims}, got {got}")
    if block_mask.device.type == "meta":
        raise ValueError("block_mask: expected a tensor with data (CPU or CUDA), got a meta tensor")
    if block_mask.layout != torch.strided:
        raise ValueError(f"block_mask: expected a dense tensor, got layout {block_mask.layout}")


def _validate(lay: BlockLayout, prefix: str = "layout.") -> None:
    """Everything about a layout: :func:`_validate_structure`, then :func:`_validate_values`."""
    _validate_structure(lay, prefix)
    _validate_values(lay, prefix)


def _validate_structure(lay: BlockLayout, prefix: str = "layout.") -> None:
    """Block, shape, and each index tensor's type, dtype, dims, size and device: no data is read."""
    _check_block(lay.block)
    if (not isinstance(lay.shape, tuple) or len(lay.shape) != 2
            or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 or s % lay.block for s in lay.shape)):
        raise ValueError(f"shape: expected (rows, cols), non-negative multiples of block={lay.block}, "
                         f"got {lay.shape!r}")
    r, c = lay.shape[0] // lay.block, lay.shape[1] // lay.block
    device = None
    for name in _INDEX_FIELDS:
        t = getattr(lay, name)
        if not isinstance(t, torch.Tensor) or t.dtype != torch.int32 or t.dim() != 1:
            got = f"{t.dtype} tensor of dim {t.dim()}" if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{prefix}{name}: expected a 1-D torch.int32 tensor, got {got}")
        if t.device.type == "meta":
            raise ValueError(f"{prefix}{name}: expected a tensor with data (CPU or CUDA), got a meta tensor")
        if not t.is_contiguous():
            raise ValueError(f"{prefix}{name}: expected a contiguous tensor, got strides {t.stride()}")
        if device is None:
            device = t.device
        elif t.device != device:
            raise ValueError(f"{prefix}{name}: expected all index tensors on {device}, got {t.device}")
    nnz = lay.col.numel()
    expect = {"crow": r + 1, "ccol": c + 1, "row": nnz, "row_t": nnz, "perm_t": nnz}
    for name, n in expect.items():
        if getattr(lay, name).numel() != n:
            raise ValueError(f"{prefix}{name}: expected {n} entries (R={r}, C={c}, nnz={nnz}), "
                             f"got {getattr(lay, name).numel()}")


def _validate_values(lay: BlockLayout, prefix: str = "layout.") -> None:
    """The index values (O(nnz), one host sync on CUDA); the structure must be valid already."""
    r, c = lay.shape[0] // lay.block, lay.shape[1] // lay.block
    nnz = lay.col.numel()
    crow, col, row = lay.crow.long().cpu(), lay.col.long().cpu(), lay.row.long().cpu()
    ccol, row_t, perm_t = lay.ccol.long().cpu(), lay.row_t.long().cpu(), lay.perm_t.long().cpu()
    if crow[0] != 0 or crow[-1] != nnz or bool((crow[1:] < crow[:-1]).any()):
        raise ValueError(f"{prefix}crow: expected non-decreasing pointers from 0 to nnz={nnz}, "
                         f"got {crow.tolist()[:16]}")
    if ccol[0] != 0 or ccol[-1] != nnz or bool((ccol[1:] < ccol[:-1]).any()):
        raise ValueError(f"{prefix}ccol: expected non-decreasing pointers from 0 to nnz={nnz}, "
                         f"got {ccol.tolist()[:16]}")
    if nnz == 0:
        return
    if bool((col < 0).any()) or bool((col >= c).any()):
        raise ValueError(f"{prefix}col: expected block columns in [0, {c}), "
                         f"got min {int(col.min())} max {int(col.max())}")
    if bool((row_t < 0).any()) or bool((row_t >= r).any()):
        raise ValueError(f"{prefix}row_t: expected block rows in [0, {r}), "
                         f"got min {int(row_t.min())} max {int(row_t.max())}")
    expect_row = torch.repeat_interleave(torch.arange(r), crow[1:] - crow[:-1])
    if not torch.equal(row, expect_row):
        raise ValueError(f"{prefix}row: expected the block row of each stored block (consistent with crow)")
    key = row * c + col
    if bool((key[1:] <= key[:-1]).any()):
        raise ValueError(f"{prefix}col: expected strictly ascending block columns within each block row "
                         "(duplicates or unsorted columns given)")
    if not torch.equal(torch.sort(perm_t).values, torch.arange(nnz)):
        raise ValueError(f"{prefix}perm_t: expected a permutation of range(nnz={nnz})")
    col_of_t = torch.repeat_interleave(torch.arange(c), ccol[1:] - ccol[:-1])
    if not (torch.equal(row[perm_t], row_t) and torch.equal(col[perm_t], col_of_t)):
        raise ValueError(f"{prefix}ccol/row_t/perm_t: transpose metadata does not describe the same blocks "
                         "as crow/col")
    key_t = col_of_t * r + row_t
    if bool((key_t[1:] <= key_t[:-1]).any()):
        raise ValueError(f"{prefix}row_t: expected strictly ascending block rows within each block column")


# Layout states whose values were checked: id(col) -> (weak refs to the six tensors, their versions,
# block, shape). Weak references: the cache never keeps a layout alive, and an entry whose tensors
# died (ids reused) can never match.
_validated: dict[int, tuple] = {}


def _state(lay: BlockLayout):
    """(tensors, versions) of a layout, or None where a field is not a tensor or a tensor has no version
    counter (inference tensors: checked at every call)."""
    tensors = lay.tensors()
    if not all(isinstance(t, torch.Tensor) for t in tensors) or any(t.is_inference() for t in tensors):
        return None
    return tensors, tuple(t._version for t in tensors)


def _remember(lay: BlockLayout) -> None:
    state = _state(lay)
    if state is None:
        return
    tensors, versions = state
    key = id(lay.col)

    def drop(_ref, key=key):
        entry = _validated.get(key)
        if entry is not None and entry[0][1] is _ref:
            del _validated[key]

    refs = tuple(weakref.ref(t, drop) if f == "col" else weakref.ref(t) for f, t in zip(_INDEX_FIELDS, tensors))
    _validated[key] = (refs, versions, lay.block, lay.shape)


def is_validated(lay: BlockLayout) -> bool:
    """True if this exact state of ``lay`` (same tensors, unchanged since) had its values checked."""
    state = _state(lay)
    if state is None:
        return False
    tensors, versions = state
    entry = _validated.get(id(lay.col))
    return (entry is not None and entry[1] == versions and entry[2] == lay.block and entry[3] == lay.shape
            and all(r() is t for r, t in zip(entry[0], tensors)))


def ensure_validated(lay: BlockLayout) -> BlockLayout:
    """Check ``lay`` (structure always, values unless this state was checked before); ``ValueError``
    naming the field otherwise. Called by every op before a backend runs (see the module doc)."""
    _check_layout(lay)
    if is_validated(lay):  # same tensors, unchanged: dtype, size and device cannot have changed either
        return lay
    _validate_structure(lay)
    _validate_values(lay)
    _remember(lay)
    return lay


def check_data(lay: BlockLayout, data: torch.Tensor, name: str) -> None:
    """Check that ``data`` is block data ``[..., nnz, B, B]`` for ``lay`` on the layout's device."""
    b = lay.block
    if not isinstance(data, torch.Tensor):
        raise ValueError(f"{name}: expected a tensor [..., nnz={lay.nnz}, {b}, {b}], got {type(data).__name__}")
    if data.dim() < 3 or tuple(data.shape[-3:]) != (lay.nnz, b, b):
        raise ValueError(f"{name}: expected block data of shape [..., nnz={lay.nnz}, {b}, {b}], "
                         f"got {tuple(data.shape)}")
    if data.device != lay.device:
        raise ValueError(f"{name}: expected a tensor on the layout's device {lay.device}, got {data.device}")


# ---------------------------------------------------------------------------- operand checks
# Shared by every backend (sparse.ops.block_sparse runs them before dispatch): shapes, dtypes, devices
# and layout; which device types a backend runs on is the dispatcher's business, not checked here.
DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _check_layout(layout) -> None:
    if not isinstance(layout, BlockLayout):
        raise ValueError(f"layout: expected a sparse.ops.BlockLayout, got {type(layout).__name__}")


def check_flag(v, name: str) -> bool:
    """A bool argument (``trans_a``, ...): ``True``/``False`` or a numpy bool, nothing merely truthy."""
    if not isinstance(v, (bool, np.bool_)):
        raise ValueError(f"{name}: expected True or False, got {type(v).__name__} {v!r}")
    return bool(v)


def _check_tensor(t, name: str, dtype=None) -> None:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if t.layout != torch.strided:
        raise ValueError(f"{name}: expected a dense (strided) tensor, got layout {t.layout}")
    if t.dtype not in DTYPES:
        raise ValueError(f"{name}: expected dtype float32, float16 or bfloat16, got {t.dtype}")
    if dtype is not None and t.dtype != dtype:
        raise ValueError(f"{name}: expected dtype {dtype} (all operands must share one dtype), got {t.dtype}")


def _check_dense(t, name: str, dtype=None) -> None:
    _check_tensor(t, name, dtype)
    if t.dim() < 2:
        raise ValueError(f"{name}: expected a dense tensor [..., rows, cols], got shape {tuple(t.shape)}")


def _check_same_device(t: torch.Tensor, name: str, layout: BlockLayout) -> None:
    if t.device != layout.device:
        raise ValueError(f"{name}: expected a tensor on the layout's device {layout.device}, got {t.device}")


def _dims(t: torch.Tensor, trans: bool) -> tuple[int, int]:
    r, c = t.shape[-2], t.shape[-1]
    return (c, r) if trans else (r, c)


def _data_lead(data: torch.Tensor, lead: tuple, name: str) -> None:
    if data.dim() > 3 and tuple(data.shape[:-3]) != tuple(lead):
        raise ValueError(f"{name}: expected leading dims () or {tuple(lead)} (those of the dense operand), "
                         f"got {tuple(data.shape[:-3])}")


def check_dsd(a_data, layout, b, trans_a=False, trans_b=False):
    """Validate ``dsd`` arguments (``op(S) @ op(b)``); returns ``(M, N, leading dims)``."""
    trans_a, trans_b = check_flag(trans_a, "trans_a"), check_flag(trans_b, "trans_b")
    _check_layout(layout)
    _check_tensor(a_data, "a_data")
    check_data(layout, a_data, "a_data")
    _check_dense(b, "b", a_data.dtype)
    _check_same_device(b, "b", layout)
    m, k = layout.shape[::-1] if trans_a else layout.shape
    kb, n = _dims(b, trans_b)
    if kb != k:
        raise ValueError(f"b: expected {'[..., N, K]' if trans_b else '[..., K, N]'} with K={k} "
                         f"(op(S) is {m}x{k}), got shape {tuple(b.shape)}")
    lead = tuple(b.shape[:-2])
    _data_lead(a_data, lead, "a_data")
    return m, n, lead


def check_dds(a, b_data, layout, trans_a=False, trans_b=False, *, names=("a", "b_data")):
    """Validate ``dds`` arguments (``op(a) @ op(S)``); returns ``(M, N, leading dims)``."""
    trans_a, trans_b = check_flag(trans_a, "trans_a"), check_flag(trans_b, "trans_b")
    a_name, d_name = names
    _check_layout(layout)
    _check_dense(a, a_name)
    _check_tensor(b_data, d_name, a.dtype)
    check_data(layout, b_data, d_name)
    _check_same_device(a, a_name, layout)
    k, n = layout.shape[::-1] if trans_b else layout.shape
    m, ka = _dims(a, trans_a)
    if ka != k:
        raise ValueError(f"{a_name}: expected {'[..., K, M]' if trans_a else '[..., M, K]'} with K={k} "
                         f"(op(S) is {k}x{n}), got shape {tuple(a.shape)}")
    lead = tuple(a.shape[:-2])
    _data_lead(b_data, lead, d_name)
    return m, n, lead


def check_sdd(a, b, layout, trans_a=False, trans_b=False):
    """Validate ``sdd`` arguments (kept blocks of ``op(a) @ op(b)``); returns ``(K, leading dims)``."""
    trans_a, trans_b = check_flag(trans_a, "trans_a"), check_flag(trans_b, "trans_b")
    _check_layout(layout)
    _check_dense(a, "a")
    _check_dense(b, "b", a.dtype)
    m, k = _dims(a, trans_a)
    kb, n = _dims(b, trans_b)
    if (m, n) != layout.shape:
        raise ValueError(f"a, b: expected op(a) @ op(b) of shape {layout.shape} (the layout's), "
                         f"got {m}x{n} from a {tuple(a.shape)}, b {tuple(b.shape)}")
    if kb != k:
        raise ValueError(f"b: expected inner dim K={k} (from a), got shape {tuple(b.shape)}")
    if tuple(a.shape[:-2]) != tuple(b.shape[:-2]):
        raise ValueError(f"a, b: expected the same leading dims, got {tuple(a.shape[:-2])} and "
                         f"{tuple(b.shape[:-2])}")
    _check_same_device(a, "a", layout)
    _check_same_device(b, "b", layout)
    return k, tuple(a.shape[:-2])
