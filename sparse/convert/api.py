"""``convert_checkpoint``: unstructured-sparse checkpoint -> N:M (optionally transposable) checkpoint."""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import os
import time
from contextlib import ExitStack

import torch

from ..io_utils import atomic_dir, atomic_file, atomic_write_text
# parse_pattern is re-exported as sparse.convert.parse_pattern: the one parser of "N:M" strings
from ..pruning.patterns import NMPattern, TransposableNMPattern, as_2d, parse_pattern
from .atomic import check_paths
from .prune import BlockBuffer, PruneStats, prune_blocks, prune_tensor
from .report import ConvertReport, TensorReport
from .safetensors_io import SafetensorsReader, SafetensorsWriter, copy_raw
from .sources import SAFETENSORS_EXT, TORCH_EXT, Shard, Source, copy_extra_files, resolve_source
from .targets import TargetFilter
from .torch_io import load_state_dict, save_state_dict

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    """glibc's ``malloc_trim`` or None (other C libraries / platforms)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):
        return None


def _trim_heap() -> None:
    # Freed block temporaries stay in glibc's heap, fragmented, and resident memory then creeps
    # up with every large tensor; handing them back after each tensor keeps the peak flat.
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


class _TensorSource:
    """Uniform access to one input shard: names in file order, dtype/shape, tensor, raw bytes."""

    def __init__(self, shard: Shard, stack: ExitStack):
        self.kind = shard.kind
        if shard.kind == "safetensors":
            self.reader = stack.enter_context(SafetensorsReader(shard.path))
            self.names = [i.name for i in self.reader.infos]
            self.metadata = self.reader.metadata
        else:
            self.sd = load_state_dict(shard.path)
            self.names = list(self.sd)
            self.metadata = None

    def meta(self, name: str) -> tuple[torch.dtype, tuple[int, ...]]:
        if self.kind == "safetensors":
            i = self.reader.by_name[name]
            return i.dtype, i.shape
        t = self.sd[name]
        return t.dtype, tuple(t.shape)

    def tensor(self, name: str) -> torch.Tensor:
        return self.reader.tensor(name) if self.kind == "safetensors" else self.sd[name]

    def release(self, name: str, upto: int | None = None) -> None:
        if self.kind == "safetensors":
            self.reader.release(name, upto)


class _Sink:
    """Output of one shard: streaming safetensors, or a dict saved with torch.save at the end."""

    def __init__(self, path: str, kind: str, entries, metadata):
        self.kind, self.path = kind, path
        if kind == "safetensors":
            self.file = open(path, "wb")
            if metadata is None:
                metadata = {"format": "pt"}  # transformers refuses safetensors without a format tag
            self.writer = SafetensorsWriter(self.file, entries, metadata)
            self.buffer = BlockBuffer()
        else:
            self.out: dict[str, torch.Tensor] = {}
            self.parts: list[torch.Tensor] = []

    def write_chunk(self, name: str, chunk: torch.Tensor) -> None:
        if self.kind == "safetensors":
            self.writer.write(name, chunk)
        else:
            self.parts.append(chunk)

    def end_tensor(self, name: str, shape, dtype) -> None:
        if self.kind != "safetensors":
            self.out[name] = torch.cat([p.reshape(-1) for p in self.parts]).reshape(shape) if self.parts \
                else torch.empty(shape, dtype=dtype)
            self.parts = []

    def copy(self, name: str, src: _TensorSource) -> None:
        if self.kind == "safetensors":
            if src.kind == "safetensors":
                copy_raw(self.writer, name, src.reader.raw(name), lambda done: src.release(name, done))
            else:
                self.writer.write(name, src.tensor(name))
        else:
            self.out[name] = src.tensor(name).clone() if src.kind == "safetensors" else src.tensor(name)

    def close(self) -> None:
        if self.kind == "safetensors":
            self.writer.finish()
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()
        else:
            save_state_dict(self.out, self.path)


def _out_kind(shard: Shard, source: Source, dst: str) -> str:
    if source.is_dir_output:
        return shard.kind
    low = dst.lower()
    if low.endswith(SAFETENSORS_EXT):
        return "safetensors"
    if low.endswith(TORCH_EXT):
        return "torch"
    raise ValueError(f"dst: expected a file name ending in .safetensors, .pt, .pth or .bin, got {dst!r}")


def _convert_shard(shard: Shard, source: Source, out_path: str, out_kind: str,
                   pattern: NMPattern | TransposableNMPattern, targets: TargetFilter,
                   overrides: dict[str, torch.Tensor], masks: dict[str, torch.Tensor], report: ConvertReport,
                   progress) -> None:
    with ExitStack() as stack:
        src = _TensorSource(shard, stack)
        entries = [(name, *src.meta(name)) for name in src.names]
        sink = _Sink(out_path, out_kind, entries, src.metadata)
        try:
            for name, dtype, shape in entries:
                nbytes = dtype.itemsize * int(torch.Size(shape).numel())
                if targets.wanted(name, dtype, shape):
                    why = pattern.fits(shape)
                    if why is not None:
                        report.skipped[name] = why
                        log.warning("not converting %s: %s", name, why)
                        sink.copy(name, src)
                        report.untouched += 1
                    else:
                        report.tensors.append(_convert_one(name, src.tensor(name), pattern, overrides.get(name), sink,
                                                           lambda done, name=name: src.release(name, done),
                                                           masks.get(name)))
                        sink.end_tensor(name, shape, dtype)
                        _trim_heap()
                elif name in overrides:  # a bias refitted by calibration
                    sink.write_chunk(name, overrides[name].to(dtype).contiguous())
                    sink.end_tensor(name, shape, dtype)
                else:
                    sink.copy(name, src)
                    report.untouched += 1
                src.release(name)
                report.bytes_read += nbytes
                if progress is not None:
                    progress.update(nbytes)
            sink.close()
        except BaseException:
            if out_kind == "safetensors" and not sink.file.closed:
                sink.file.close()
            raise


def _convert_one(name, weight, pattern, override, sink, consumed=None, mask=None) -> TensorReport:
    """Prune (or write the calibrated override of) one target; ``consumed(nbytes)`` is told how many
    leading bytes of the source are no longer needed, so their pages can be dropped early.
    ``mask``: the calibration's kept mask ``[rows, cols]`` of ``override`` (default: the magnitude mask)."""
    stats = PruneStats()
    created = 0
    if override is None:
        # A torch sink keeps the blocks, so only the streaming writer may reuse one buffer.
        buffer = sink.buffer if sink.kind == "safetensors" else None
        done = 0
        for pruned, _ in prune_blocks(weight, pattern, stats, name, buffer=buffer):
            sink.write_chunk(name, pruned)
            done += pruned.numel() * pruned.element_size()
            if consumed is not None:
                consumed(done)
        nnz_after = stats.nnz_after
    else:
        # Calibrated (a model small enough to run, so whole tensors): the mask is the calibration's
        # (SparseGPT and Wanda choose their own), the values written the calibrated ones.
        w2d, o2d = as_2d(weight), as_2d(override.to(weight.dtype))
        if mask is None:
            _, mask, _ = prune_tensor(weight, pattern, name)
        mask = mask.reshape(w2d.shape)
        if not pattern.valid(mask):
            raise RuntimeError(f"{name}: the calibrated mask is not a valid {pattern.describe()} mask")
        if bool((o2d[~mask] != 0).any()):
            raise RuntimeError(f"{name}: calibrated weight is non-zero outside its mask")
        src_nz = w2d != 0
        acc = torch.promote_types(w2d.dtype, torch.float32)
        stats.numel = w2d.numel()
        stats.nnz_before = int(src_nz.sum())
        stats.kept_nonzero = int((src_nz & mask).sum())
        stats.abs_before = float(torch.linalg.vector_norm(w2d, ord=1, dtype=acc))
        stats.abs_kept = float(torch.linalg.vector_norm(torch.where(mask, w2d, torch.zeros((), dtype=w2d.dtype)),
                                                        ord=1, dtype=acc))
        created = int(((o2d != 0) & ~src_nz).sum())
        nnz_after = int(torch.count_nonzero(o2d))
        sink.write_chunk(name, o2d.contiguous())
    return TensorReport(name=name, shape=list(weight.shape), dtype=str(weight.dtype).replace("torch.", ""),
                        numel=stats.numel, nnz_before=stats.nnz_before, nnz_after=nnz_after,
                        kept_nonzero=stats.kept_nonzero, newly_zeroed=stats.newly_zeroed,
                        abs_before=stats.abs_before, abs_kept=stats.abs_kept, calibrated=override is not None,
                        created_nonzero=created)


# How the path arguments are named in messages: the API's name, then the CLI's where it differs.
REPORT_ARG = "report_path (--report)"
CALIBRATION_ARG = "calibration_file (--calibration-file)"
_MAX_LINE = 1 << 20  # characters per calibration line; a text file has no longer lines


def _path_arg(name: str, value) -> str:
    if not isinstance(value, (str, bytes, os.PathLike)):
        raise ValueError(f"{name}: expected a path (str or os.PathLike), "
                         f"got {type(value).__name__} {repr(value)[:100]}")
    return os.fsdecode(os.fspath(value))


def read_calibration_file(path: str, limit: int | None = None) -> list[str]:
    """The non-empty lines (stripped) of the UTF-8 text file ``path``, at most ``limit`` of them.

    Reads only as far as needed, so a huge file costs nothing; ``ValueError``/``FileNotFoundError``
    naming ``--calibration-file`` for a missing, non-regular, binary, non-UTF-8 or empty file.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"{CALIBRATION_ARG}: {path!r} does not exist")
    if not os.path.isfile(path):  # a folder, or a FIFO that would block the read forever
        raise ValueError(f"{CALIBRATION_ARG}: expected a UTF-8 text file, got {path!r}, which is not a regular file")
    texts: list[str] = []
    with open(path, encoding="utf-8", newline=None) as f:
        lineno = 0
        try:
            while limit is None or len(texts) < limit:
                line = f.readline(_MAX_LINE)
                if not line:
                    break
                lineno += 1
                if "\0" in line:
                    raise ValueError(f"{CALIBRATION_ARG}: expected a UTF-8 text file, got binary data "
                                     f"(a NUL byte on line {lineno}) in {path!r}")
                if line.strip():
                    texts.append(line.strip())
        except UnicodeDecodeError as exc:
            raise ValueError(f"{CALIBRATION_ARG}: expected a UTF-8 text file, got undecodable bytes near line "
                             f"{lineno + 1} of {path!r} ({exc.reason})") from None
    if not texts:
        raise ValueError(f"{CALIBRATION_ARG}: expected at least one non-empty line, got none in {path!r}")
    return texts


def _check_selection(src: str, targets: TargetFilter, include: list[str], exclude: list[str]) -> None:
    """An explicit ``include`` that selects nothing is a mistake (a typo in the regex, the wrong
    checkpoint): refuse it before writing a plain copy. Reads only headers for safetensors."""
    from .reader import list_tensors

    tensors = list_tensors(src)
    if any(targets.wanted(name, dtype, shape) for name, dtype, shape in tensors):
        return
    arg = "include, exclude" if exclude else "include"
    sample = ", ".join(repr(name[:80]) for name, _, _ in tensors[:3]) + (", ..." if len(tensors) > 3 else "")
    raise ValueError(f"{arg}: expected a selection of at least one floating-point weight with 2 to 4 dims, "
                     f"got none for include={repr(include)[:200]}"
                     + (f" exclude={repr(exclude)[:200]}" if exclude else "")
                     + f" among the {len(tensors)} tensors of {src!r}" + (f" ({sample})" if tensors else ""))


def convert_checkpoint(src: str, dst: str, pattern: str = "2:4", transposable: bool = False, method: str = "auto",
                       *, include: list[str] | None = None, exclude: list[str] | None = None,
                       calibrate: bool | str = False, calibration=None, calibration_texts: list[str] | None = None,
                       calibration_file: str | None = None, sequential: bool | None = None,
                       force: bool = False, report_path: str | None = None,
                       progress: bool = False) -> ConvertReport:
    """Convert an (unstructured-sparse) checkpoint's Linear/conv weights to an N:M pattern.

    Args:
        src: a ``.safetensors`` file, a sharded ``*.index.json``, a ``.pt``/``.pth``/``.bin`` state
            dict (loaded with ``weights_only=True`` only) or an HF model folder. Never modified.
        dst: output file (``.safetensors`` or ``.pt``/``.pth``/``.bin``) for a single-file SRC; a
            folder for sharded/HF SRC (same shard names, other files copied; HF ``from_pretrained``
            loads it). Written to a temporary sibling and renamed; refused if it exists unless ``force``.
        pattern: ``"N:M"`` (groups of M along in_features; conv weights flattened to ``[out, in*kh*kw]``),
            ``"N:MT"`` for transposable, or an ``NMPattern``/``TransposableNMPattern``
            (:mod:`sparse.pruning.patterns`).
        transposable: every aligned MxM tile keeps N per row and per column (``sparse.masks.transposable_mask``).
        method: transposable mask method (``sparse.masks.METHODS``).
        include, exclude: regexes over tensor names (see :mod:`sparse.convert.targets`).
        calibrate: HF folders only. ``"adaprune"`` (or True): the magnitude mask, then each pruned
            layer's output (and bias) fitted to the source layer's; ``"sparsegpt"``: the mask chosen
            inside an optimal-brain-surgeon column sweep that updates the remaining weights
            (:mod:`sparse.convert.sparsegpt`); ``"wanda"``: the mask by ``|W_ij| * ||X_j||``, no update.
            False/None: no calibration. Dense sources work too (one-shot pruning of a dense model).
        calibration: an :class:`sparse.convert.adaprune.AdaPruneConfig` (adaprune) or
            :class:`sparse.convert.calibration.CalibrationConfig` (sparsegpt, wanda); defaults if None.
        sequential: calibrate block by block, each block on the outputs of the already-pruned earlier
            blocks (:mod:`sparse.convert.calibration`); default (None): True when calibrating.
        calibration_texts: calibration texts (default: a slice of the BBC News training texts).
        calibration_file: or read them from this UTF-8 text file, one per non-empty line.
        force: replace an existing ``dst`` (and ``report_path``).
        report_path: also write the report as JSON there (a file outside ``dst``).
        progress: show a progress bar (bytes) on stderr.

    Paths are checked before any work starts (:mod:`sparse.convert.atomic`): ``ValueError`` naming
    both arguments when an output (``dst``, ``report_path``) is, contains or lies inside an input
    (``src``, one of its shards, ``calibration_file``) or the other output, after resolving links
    and relative spellings; ``FileExistsError`` for an existing output without ``force``;
    ``FileNotFoundError`` for an output whose folder is missing.

    Returns:
        :class:`ConvertReport`. Every tensor keeps its name, dtype and shape; non-target tensors are
        bit-identical (except biases refitted by calibration); pruned entries are exactly zero.
    """
    pattern = parse_pattern(pattern, transposable=transposable, method=method)
    transposable = pattern.transposable
    method = pattern.method if transposable else method
    for arg, v in (("include", include), ("exclude", exclude)):
        if v is not None and (isinstance(v, str) or not all(isinstance(p, str) for p in v)):
            raise ValueError(f"{arg}: expected a list of regex strings, got {repr(v)[:200]}")
    targets = TargetFilter(list(include or []), list(exclude or []))
    src, dst = _path_arg("src", src), _path_arg("dst", dst)
    if report_path is not None:
        report_path = _path_arg(REPORT_ARG, report_path)
    from .calibration import resolve_method

    calib_method = resolve_method(calibrate)
    if sequential is not None and not isinstance(sequential, bool):
        raise ValueError(f"sequential (--sequential): expected a bool or None, got {sequential!r}")
    if sequential and calib_method is None:
        raise ValueError("sequential (--sequential): only used with calibrate (--calibrate METHOD)")
    sequential = calib_method is not None if sequential is None else sequential
    if calibration_file is not None:
        calibration_file = _path_arg(CALIBRATION_ARG, calibration_file)
        if calib_method is None:
            raise ValueError(f"{CALIBRATION_ARG}: only used with calibrate=True (--calibrate)")
        if calibration_texts is not None:
            raise ValueError(f"{CALIBRATION_ARG}: give calibration_texts or calibration_file, not both")
    source = resolve_source(src)
    inputs = [("src", src)] + [(f"src shard {s.rel!r}", s.path) for s in source.shards if s.path != src]
    # files read through a link (hub-cache blobs) live outside src: their targets are inputs too
    inputs += [(f"src file {rel!r}", os.path.join(source.root, rel)) for rel in sorted(source.follow)]
    if calibration_file is not None:
        inputs.append((CALIBRATION_ARG, calibration_file))
    outputs = [("dst", dst)] + ([(REPORT_ARG, report_path)] if report_path is not None else [])
    check_paths(inputs, outputs, force=force, folders=("dst",) if source.is_dir_output else ())
    if calib_method is not None and source.kind != "hf":
        raise ValueError(f"calibrate: needs an HF model folder as src (the model is run on calibration text), "
                         f"got a {source.kind} checkpoint {src!r}")
    out_kinds = [_out_kind(s, source, dst) for s in source.shards]
    if include:
        _check_selection(src, targets, list(include), list(exclude or []))

    report = ConvertReport(src=src, dst=dst, pattern=f"{pattern.n}:{pattern.m}", transposable=transposable,
                           method=method)
    t0 = time.perf_counter()
    overrides: dict[str, torch.Tensor] = {}
    masks: dict[str, torch.Tensor] = {}
    if calib_method is not None:
        from . import calibration as calib

        cfg = calib.config_for(calib_method, calibration)
        if calibration_file is not None:
            calibration_texts = read_calibration_file(calibration_file, cfg.num_texts)
        overrides, masks, report.calibration = calib.calibrate_hf_folder(
            source, pattern, targets, calib_method, cfg, calibration_texts, sequential=sequential, progress=progress)
    progress_bar = None
    if progress:
        from tqdm import tqdm

        total = sum(os.path.getsize(s.path) for s in source.shards)
        progress_bar = tqdm(total=total, unit="B", unit_scale=True, desc="convert")
    try:
        if source.is_dir_output:
            with atomic_dir(dst, force) as tmp:
                copy_extra_files(source, tmp)  # never follows links out of the source folder
                for shard, kind in zip(source.shards, out_kinds):
                    out = os.path.join(tmp, shard.rel)
                    os.makedirs(os.path.dirname(out), exist_ok=True)
                    _convert_shard(shard, source, out, kind, pattern, targets, overrides, masks, report, progress_bar)
        else:
            with atomic_file(dst, force) as tmp:
                _convert_shard(source.shards[0], source, tmp, out_kinds[0], pattern, targets, overrides, masks,
                               report, progress_bar)
    finally:
        if progress_bar is not None:
            progress_bar.close()
    report.seconds = time.perf_counter() - t0
    if not report.tensors:
        log.warning("no tensor of %s matched the target selection; output is a copy", src)
    if report_path is not None:
        atomic_write_text(report_path, report.to_json(), overwrite=force)
    return report
