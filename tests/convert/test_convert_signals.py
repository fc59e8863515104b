"""SIGTERM / SIGINT during ``sparse convert``: temporaries removed, DST untouched, SRC unchanged,
one line on stderr, exit 143 / 130. Real processes, real signals.

The conversion is made slow on purpose (transposable masks by the networkx min-cost flow, pure
Python, a few ms per 4x4 tile): the signal is sent as soon as the temporary output appears, while
the masks are being computed, and the process is waited for instead of timed.
"""
import hashlib
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch
from safetensors.torch import save_file

from sparse.cli.signals import Terminated, exit_code, interrupts_as_exceptions, signal_name

# 512x512: 16384 tiles, tens of seconds by flow; the test only ever waits for the first of them.
ROWS = COLS = 512
DEADLINE = 120  # seconds to wait for the temporary (an import of torch on a loaded machine), not a timing check


def _digest(path):
    h = hashlib.sha256()
    for root, _, files in sorted(os.walk(path)) if os.path.isdir(path) else [(os.path.dirname(path), [], [path])]:
        for f in sorted(files):
            h.update(open(os.path.join(root, f), "rb").read())
    return h.hexdigest()


def _weights():
    g = torch.Generator().manual_seed(0)
    return {"enc.l.weight": torch.randn(ROWS, COLS, generator=g), "enc.l.bias": torch.randn(ROWS, generator=g)}


def _temps(folder):
    return [n for n in os.listdir(folder) if n.startswith(".") and (n.endswith(".tmp") or n.endswith(".old"))]


def _start(src, dst, *extra):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "sparse", "convert", str(src), str(dst), "--transposable",
                             "--method", "flow", "--no-progress", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)


def _interrupt_when_writing(proc, folder, sig):
    """Send ``sig`` once the hidden temporary output exists in ``folder``; return (rc, stderr)."""
    deadline = time.monotonic() + DEADLINE
    while not _temps(folder):
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"convert ended (rc={proc.returncode}) before its temporary appeared: {err[-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("no temporary output appeared")
        time.sleep(0.02)
    proc.send_signal(sig)
    try:
        _, err = proc.communicate(timeout=DEADLINE)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail(f"convert did not stop on {sig.name}")
    return proc.returncode, err


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["SIGTERM", "SIGINT"])
def test_signal_during_file_conversion_leaves_nothing(tmp_path, sig, code):
    src = tmp_path / "in.safetensors"
    save_file(_weights(), str(src))
    before = _digest(src)
    dst = tmp_path / "out.safetensors"
    rc, err = _interrupt_when_writing(_start(src, dst), tmp_path, sig)
    assert rc == code, err
    lines = err.strip().splitlines()
    assert lines == [f"sparse convert: interrupted ({sig.name}); no partial output left behind"], err
    assert "Traceback" not in err
    assert not dst.exists() and _temps(tmp_path) == []
    assert sorted(os.listdir(tmp_path)) == ["in.safetensors"]
    assert _digest(src) == before


def test_sigterm_during_folder_conversion_keeps_the_previous_dst(tmp_path):
    """An HF folder goes to a temporary folder; with --force the previous DST must survive the kill."""
    hf = tmp_path / "hf"
    hf.mkdir()
    save_file(_weights(), str(hf / "model.safetensors"))
    (hf / "config.json").write_text("{}")
    before = _digest(hf)
    dst = tmp_path / "out"
    dst.mkdir()
    (dst / "previous.txt").write_text("the earlier conversion")
    rc, err = _interrupt_when_writing(_start(hf, dst, "--force", "--report", str(tmp_path / "r.json")), tmp_path,
                                      signal.SIGTERM)
    assert rc == 143, err
    assert len(err.strip().splitlines()) == 1 and "SIGTERM" in err and "Traceback" not in err
    assert _temps(tmp_path) == [] and sorted(os.listdir(tmp_path)) == ["hf", "out"]
    assert os.listdir(dst) == ["previous.txt"] and (dst / "previous.txt").read_text() == "the earlier conversion"
    assert _digest(hf) == before


# ------------------------------------------------------------------ the handler itself, in-process
def test_sigterm_raises_terminated_inside_the_block_only():
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with pytest.raises(Terminated) as info:
        with interrupts_as_exceptions():
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(1000):  # the handler runs at the next bytecode boundary
                time.sleep(0.001)
    assert isinstance(info.value, KeyboardInterrupt)
    assert exit_code(info.value) == 143 and signal_name(info.value) == "SIGTERM"
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before
    with pytest.raises(KeyboardInterrupt) as info:
        with interrupts_as_exceptions():
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(1000):
                time.sleep(0.001)
    assert not isinstance(info.value, Terminated)
    assert exit_code(info.value) == 130 and signal_name(info.value) == "SIGINT"
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


def test_a_second_signal_does_not_interrupt_the_cleanup():
    cleaned = []
    with pytest.raises(Terminated):
        with interrupts_as_exceptions():
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                for _ in range(1000):
                    time.sleep(0.001)
            finally:
                os.kill(os.getpid(), signal.SIGINT)  # impatient user: ignored while cleaning up
                for _ in range(50):
                    time.sleep(0.001)
                cleaned.append(True)
    assert cleaned == [True]


def test_outside_the_main_thread_nothing_is_installed():
    seen = []

    def worker():
        with interrupts_as_exceptions():
            seen.append(signal.getsignal(signal.SIGTERM))

    before = signal.getsignal(signal.SIGTERM)
    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert seen == [before]


def test_an_ignored_sigint_stays_ignored():
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with interrupts_as_exceptions():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)
