"""``sparse bench convert``: checkpoint conversion throughput (MB/s) and peak RSS.

Each measured conversion runs in a fresh child process so its peak RSS (``ru_maxrss``) is its own;
the RSS after imports is subtracted and the rest compared with the largest tensor. A plain file
copy of the same checkpoint is timed in the same run, so the MB/s figure comes with the ratio to
what the disk/page cache allows here.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile

from sparse.bench import harness

DESCRIPTION = "checkpoint conversion speed (MB/s vs copy) and memory"


def add_arguments(parser):
    parser.add_argument("--size-mb", type=float, default=512, help="synthetic checkpoint size in MB (default 512)")
    parser.add_argument("--largest-mb", type=float, default=64, help="largest synthetic tensor in MB (default 64)")
    parser.add_argument("--density", type=float, default=0.5, help="non-zero fraction of the synthetic weights")
    parser.add_argument("--pattern", default="2:4")
    parser.add_argument("--transposable", action="store_true", help="also time transposable conversion")
    parser.add_argument("--no-minilm", action="store_true", help="skip the real MiniLM checkpoint")
    parser.add_argument("--workdir", default=None, help="folder for the temporary files (default: system temp)")
    # internal: the measured conversion runs in a child process (`sparse bench convert --worker ...`)
    parser.add_argument("--worker", nargs=4, default=None, help=argparse.SUPPRESS)
    harness.add_common_arguments(parser, threads=2)


def make_synthetic(path: str, size_mb: float, largest_mb: float, density: float, seed: int = 0) -> dict:
    """Write an unstructured-sparse fp32 checkpoint streaming (RAM ~ one tensor); returns its facts."""
    import torch

    from ..convert.safetensors_io import SafetensorsWriter

    if not 0 < density <= 1:
        raise ValueError(f"density: expected 0 < density <= 1, got {density}")
    if size_mb <= 0 or largest_mb <= 0:
        raise ValueError(f"size_mb, largest_mb: expected > 0, got {size_mb}, {largest_mb}")
    gen = torch.Generator().manual_seed(seed)
    big_cols = 4096
    big_rows = max(4, int(largest_mb * 1e6 / 4 / big_cols) // 4 * 4)
    shapes = []
    total = 0
    i = 0
    while total < size_mb * 1e6:
        rows = big_rows if i % 2 == 0 else max(4, big_rows // 4 // 4 * 4)
        shapes.append((f"layers.{i}.linear.weight", (rows, big_cols)))
        shapes.append((f"layers.{i}.linear.bias", (rows,)))
        total += rows * big_cols * 4 + rows * 4
        i += 1
    entries = [(name, torch.float32, shape) for name, shape in shapes]
    with open(path, "wb") as f:
        writer = SafetensorsWriter(f, entries, {"format": "pt"})
        for name, shape in shapes:
            t = torch.randn(shape, generator=gen)
            if len(shape) == 2:
                t[torch.rand(shape, generator=gen) >= density] = 0
            writer.write(name, t)
        writer.finish()
    return {"bytes": os.path.getsize(path), "tensors": len(shapes), "largest_bytes": big_rows * big_cols * 4}


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _reset_peak() -> bool:
    """Reset this process's peak RSS (VmHWM) so import-time transients do not count."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise OSError("VmHWM not found in /proc/self/status")


def _worker(src: str, dst: str, options: str, threads: str) -> None:
    """Child process: convert once, print JSON with timing and memory."""
    import resource

    import torch

    torch.set_num_threads(int(threads))
    from ..convert import convert_checkpoint

    from ..masks import nm_mask, transposable_mask

    opts = json.loads(options)
    # Load the lazily initialised backends (extension, dispatch) before taking the baseline.
    w = torch.randn(8, 8)
    nm_mask(w, 2, 4), transposable_mask(w, 2, 4)
    base = _rss_bytes()
    reset = _reset_peak()
    with harness.stopwatch() as sw:
        report = convert_checkpoint(src, dst, **opts)
    dt = sw.wall_ms / 1e3
    # Without a peak reset, ru_maxrss also holds import-time peaks: an over-estimate.
    peak = _peak_bytes() if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"seconds": dt, "bytes_read": report.bytes_read, "rss_base": base, "rss_peak": peak,
                      "kept_magnitude_ratio": report.totals()["kept_magnitude_ratio"]}))


def _measure(src: str, dst: str, options: dict, threads: int) -> dict:
    cmd = [sys.executable, "-m", "sparse", "bench", "convert", "--worker", src, dst, json.dumps(options), str(threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"conversion worker failed: {proc.stderr.strip().splitlines()[-1:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["mb_s"] = out["bytes_read"] / 1e6 / out["seconds"]
    return out


def _copy_speed(src: str, dst: str) -> float:
    with harness.stopwatch() as sw:
        if os.path.isdir(src):
            shutil.copytree(src, dst)
        else:
            shutil.copyfile(src, dst)
            with open(dst, "rb+") as f:
                os.fsync(f.fileno())
    dt = sw.wall_ms / 1e3
    size = sum(os.path.getsize(os.path.join(d, n)) for d, _, fs in os.walk(dst) for n in fs) \
        if os.path.isdir(dst) else os.path.getsize(dst)
    return size / 1e6 / dt


def _rows(name: str, src: str, work: str, pattern: str, transposable: bool, threads: int, largest: int) -> list[dict]:
    rows = []
    copy_mb_s = _copy_speed(src, os.path.join(work, f"{name}.copy"))
    variants = [("n:m", False)] + ([("transposable", True)] if transposable else [])
    for label, tr in variants:
        ext = "" if os.path.isdir(src) else ".safetensors"
        dst = os.path.join(work, f"{name}.{label.replace(':', '')}{ext}")
        r = _measure(src, dst, {"pattern": pattern, "transposable": tr}, threads)
        extra = r["rss_peak"] - r["rss_base"]
        rows.append({"checkpoint": name, "variant": f"{pattern} {label}", "mb": r["bytes_read"] / 1e6,
                     "seconds": r["seconds"], "mb_s": r["mb_s"], "copy_mb_s": copy_mb_s,
                     "ratio_to_copy": r["mb_s"] / copy_mb_s, "largest_tensor_mb": largest / 1e6,
                     "peak_rss_over_base_mb": extra / 1e6, "peak_over_largest": extra / largest,
                     "kept_magnitude_ratio": r["kept_magnitude_ratio"]})
        shutil.rmtree(dst, ignore_errors=True) if os.path.isdir(dst) else os.remove(dst)
    copy = os.path.join(work, f"{name}.copy")
    shutil.rmtree(copy, ignore_errors=True) if os.path.isdir(copy) else os.remove(copy)
    return rows


COLUMNS = (
    harness.Column("checkpoint", "checkpoint", align="<"), harness.Column("variant", "variant", align="<"),
    harness.Column("mb", "MB", ".1f"), harness.Column("seconds", "s", ".2f"), harness.Column("mb_s", "MB/s", ".0f"),
    harness.Column("copy_mb_s", "copy MB/s", ".0f"), harness.Column("ratio_to_copy", "ratio", ".2f"),
    harness.Column("largest_tensor_mb", "largest MB", ".1f"),
    harness.Column("peak_rss_over_base_mb", "peak-base MB", ".1f"),
    harness.Column("peak_over_largest", "x largest", ".2f"),
)


def run(args) -> int:
    if args.worker is not None:
        _worker(*args.worker)
        return 0
    harness.setup(args)
    from ..convert.reader import list_tensors

    rows = []
    with tempfile.TemporaryDirectory(dir=args.workdir, prefix="sparse-bench-convert-") as work:
        syn = os.path.join(work, "synthetic.safetensors")
        facts = make_synthetic(syn, args.size_mb, args.largest_mb, args.density)
        rows += _rows("synthetic", syn, work, args.pattern, args.transposable, args.threads, facts["largest_bytes"])
        os.remove(syn)
        if not args.no_minilm:
            from ..data import minilm_path

            path = minilm_path()
            largest = max(dt.itemsize * math.prod(shape) for _, dt, shape in list_tensors(path))
            rows += _rows("minilm", path, work, args.pattern, args.transposable, args.threads, largest)
    print(harness.format_table(rows, COLUMNS))
    if args.json:
        harness.write_json(args.json, rows, force=args.force)
    return 0
