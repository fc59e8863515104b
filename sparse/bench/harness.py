"""What every benchmark shares: timing, the table printer, the common arguments and the JSON writer.

In the spirit of flash-attention's ``utils/benchmark.py``: one clock, so that all figures mean the
same thing. Benchmark modules (one per ``sparse bench NAME``, registered in :mod:`sparse.cli.bench`)
expose ``DESCRIPTION``, ``add_arguments(parser)`` and ``run(args) -> int``; they call
:func:`add_common_arguments` from the first and :func:`setup` in the second, before any work.

* :func:`stopwatch` / :func:`time_once` time one call (wall and CPU time); on CUDA the span is
  measured with CUDA events after a synchronize, so queued kernels are neither missed nor
  over-counted. :func:`time_fn` runs warm-ups, then ``repeats`` timed calls, and returns a
  :class:`Timing` (median / min / max ms); :func:`time_interleaved` does the same for several callables
  in alternating rounds. Round-robin benchmarks with more per-round logic (backends, exceptions) call
  :func:`time_once` per side and :func:`summarize` the lists.
* :func:`format_table`: rows of dicts + :class:`Column` specs -> aligned text.
* :func:`add_common_arguments` (``--threads``, ``--json PATH``, ``--force``, ``--device``) and
  :func:`setup` (threads set, device checked, ``--json`` target checked before any work);
  :func:`csv_arg` / :func:`csv_choices` for comma-list options.
* :func:`write_json`: atomic (temporary sibling, then rename), refuses an existing file without force.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import torch

DEVICES = ("cpu", "cuda")


# ---------------------------------------------------------------------------------------------- timing

@dataclass
class Sample:
    """One timed span: wall-clock ms (CUDA-event ms on a CUDA device) and this process's CPU ms."""
    wall_ms: float = 0.0
    cpu_ms: float = 0.0


@dataclass(frozen=True)
class Timing:
    """Summary of repeated timings, in milliseconds."""
    median_ms: float
    min_ms: float
    max_ms: float
    times_ms: tuple[float, ...]


def _is_cuda(device) -> bool:
    return device is not None and torch.device(device).type == "cuda"


@contextlib.contextmanager
def stopwatch(device=None) -> Iterator[Sample]:
    """Time the ``with`` body; the yielded :class:`Sample` is filled in when the body ends."""
    sample = Sample()
    cuda = _is_cuda(device)
    if cuda:
        torch.cuda.synchronize(device)   # work queued before the body is not the body's
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
    wall, cpu = time.perf_counter(), time.process_time()
    yield sample
    if cuda:
        end.record()
        torch.cuda.synchronize(device)
        sample.wall_ms = start.elapsed_time(end)
    else:
        sample.wall_ms = (time.perf_counter() - wall) * 1e3
    sample.cpu_ms = (time.process_time() - cpu) * 1e3


def time_once(fn: Callable[[], Any], device=None) -> Sample:
    """One timed call of ``fn``."""
    with stopwatch(device) as sample:
        fn()
    return sample


def summarize(times_ms: Sequence[float]) -> Timing:
    """Median / min / max of a non-empty list of timings in ms."""
    if not times_ms:
        raise ValueError("times_ms: expected at least one timing, got none")
    return Timing(statistics.median(times_ms), min(times_ms), max(times_ms), tuple(times_ms))


def time_fn(fn: Callable[[], Any], *, repeats: int = 10, warmup: int = 1, device=None) -> Timing:
    """``warmup`` untimed calls (caches, allocator, autotuning), then ``repeats`` timed ones."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats, warmup: expected >= 1 and >= 0, got {repeats}, {warmup}")
    for _ in range(warmup):
        fn()
    return summarize([time_once(fn, device).wall_ms for _ in range(repeats)])


def time_interleaved(fns: dict[str, Callable[[], Any]], repeats: int = 10, warmup: int = 1,
                     device=None) -> dict[str, Timing]:
    """Time several callables in alternating rounds (one call of each per round, ``warmup`` untimed rounds
    first), so that machine noise hits them alike: name -> :class:`Timing`."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats, warmup: expected >= 1 and >= 0, got {repeats}, {warmup}")
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            times[k].append(time_once(fn, device).wall_ms)
    return {k: summarize(v) for k, v in times.items()}


# ----------------------------------------------------------------------------------------------- table

@dataclass(frozen=True)
class Column:
    """One table column: the row key, its header, how to format the value, alignment, minimum width.

    ``fmt`` is a format spec (``".3f"``) or a callable returning the cell text; a missing or None
    value shows as ``missing``. A fixed ``width`` lets rows printed one at a time line up.
    """
    key: str
    header: str
    fmt: str | Callable[[Any], str] = ""
    align: str = ">"
    width: int = 0
    missing: str = ""

    def cell(self, row: dict) -> str:
        value = row.get(self.key)
        if value is None:
            return self.missing
        return self.fmt(value) if callable(self.fmt) else format(value, self.fmt)


def format_table(rows: Sequence[dict], columns: Sequence[Column], *, header: bool = True) -> str:
    """Rows of dicts as aligned text: a header line and a rule (unless ``header=False``), one line per row.

    Column widths fit the header and every cell; cells of the last left-aligned column are not padded.
    """
    cells = [[c.cell(r) for c in columns] for r in rows]
    widths = [max([c.width, len(c.header)] + [len(line[i]) for line in cells]) for i, c in enumerate(columns)]

    def line(texts: Sequence[str]) -> str:
        return " ".join(f"{t:{c.align}{w}}" for t, c, w in zip(texts, columns, widths)).rstrip()

    out = []
    if header:
        head = line([c.header for c in columns])
        out += [head, "-" * len(head)]
    out += [line(texts) for texts in cells]
    return "\n".join(out)


# ----------------------------------------------------------------------------------- common arguments

def add_common_arguments(parser: argparse.ArgumentParser, *, threads: int | None = None,
                         devices: Sequence[str] = ("cpu",)) -> None:
    """``--threads``, ``--json PATH``, ``--force`` and ``--device`` (first of ``devices`` by default)."""
    for d in devices:
        if d not in DEVICES:
            raise ValueError(f"devices: expected names from {', '.join(DEVICES)}, got {d!r}")
    parser.add_argument("--threads", type=int, default=threads,
                        help=f"torch CPU threads (default: {threads if threads else 'torch default'})")
    parser.add_argument("--json", metavar="PATH", default=None, help="also write the results to this JSON file")
    parser.add_argument("--force", action="store_true", help="overwrite an existing --json file")
    parser.add_argument("--device", choices=tuple(devices), default=devices[0],
                        help=f"where to run (default {devices[0]})")


def setup(args: argparse.Namespace, *, json_exists_ok: bool = False) -> torch.device:
    """Apply the common arguments: set torch threads, check the device and the ``--json`` target.

    Called by a benchmark's ``run`` before any work, so that bad input fails at once. A ``--json``
    file that already exists is refused without ``--force`` (``json_exists_ok``: the benchmark reads
    and extends it, as ``accuracy --resume`` does).
    """
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads: expected an integer >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device visible (torch.cuda.is_available() is False)")
    if args.json:
        _check_target(args.json, args.force or json_exists_ok)
    return torch.device(args.device)


def csv_arg(text: str, cast: Callable[[str], Any], name: str) -> list:
    """A comma-separated option value as a non-empty list of ``cast`` values; errors name ``name``."""
    try:
        values = [cast(v.strip()) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{name}: expected a comma-separated list, got {text!r}") from None
    if not values:
        raise ValueError(f"{name}: expected at least one value, got {text!r}")
    return values


def csv_choices(text: str, choices, name: str) -> list[str]:
    """A comma-separated option value as a non-empty list of names from ``choices`` (a registry's keys);
    an unknown name is a ``ValueError`` naming the option, the known names and the one given."""
    values = csv_arg(text, str, name)
    for v in values:
        if v not in choices:
            raise ValueError(f"{name}: expected names from {', '.join(choices)}, got {v!r}")
    return values


def config(args: argparse.Namespace) -> dict:
    """The parsed arguments as a JSON-able dict (without the CLI's private entries)."""
    return {k: v for k, v in vars(args).items() if not k.startswith("_")}


# --------------------------------------------------------------------------------------------- machine

def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``, else ``lscpu``, else :func:`platform.processor`), for every figure."""
    import platform
    import subprocess

    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or "unknown"


# ------------------------------------------------------------------------------------------------ JSON

def _check_target(path: str, force: bool) -> None:
    if os.path.exists(path) and not force:
        raise FileExistsError(f"--json: {path} exists; pass --force to overwrite it")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"--json: folder {folder} of {path} does not exist")


def write_json(path: str, payload: Any, *, force: bool = False) -> None:
    """Write ``payload`` as JSON to ``path`` atomically; an existing file is replaced only with ``force``."""
    from sparse.io_utils import atomic_write_json

    _check_target(path, force)
    atomic_write_json(path, payload, overwrite=force)
