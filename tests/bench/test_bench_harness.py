"""sparse.bench.harness (timing, table, common arguments, JSON writer) and the ``sparse bench`` registry."""
import argparse
import json
import os
import subprocess
import sys
import time

import pytest
import torch

from sparse.bench import harness
from sparse.cli import main
from sparse.cli.bench import BENCHES

NAMES = ("masks", "optimizer", "blocksparse", "blocksparse-gpu", "convert", "convert-minilm", "accuracy", "train",
         "sparse24", "dropout")


def test_time_fn_warms_up_then_reports_median_min_max_of_each_run():
    calls = []

    def sleepy():
        calls.append(1)
        time.sleep(0.01)

    t = harness.time_fn(sleepy, repeats=5, warmup=2)
    assert len(calls) == 7 and len(t.times_ms) == 5        # 2 warm-up calls are not timed
    assert t.min_ms <= t.median_ms <= t.max_ms
    assert t.min_ms >= 10.0                                 # every timed call includes its 10 ms sleep
    assert t.median_ms == sorted(t.times_ms)[2] and t.min_ms == min(t.times_ms) and t.max_ms == max(t.times_ms)


def test_summarize_and_stopwatch():
    t = harness.summarize([3.0, 1.0, 2.0, 10.0])
    assert (t.median_ms, t.min_ms, t.max_ms) == (2.5, 1.0, 10.0)
    with pytest.raises(ValueError, match="times_ms: expected at least one"):
        harness.summarize([])
    with pytest.raises(ValueError, match="repeats, warmup"):
        harness.time_fn(lambda: None, repeats=0)
    with harness.stopwatch() as sw:
        time.sleep(0.005)
    assert sw.wall_ms >= 5.0 and sw.cpu_ms >= 0.0


def test_format_table_aligns_fixed_rows():
    cols = (harness.Column("name", "name", align="<"), harness.Column("ms", "time ms", ".1f"),
            harness.Column("x", "speedup", lambda v: f"{v:.2f}x", missing="n/a"))
    rows = [{"name": "dense", "ms": 12.345, "x": 1.0}, {"name": "block-sparse 90%", "ms": 3.0, "x": None}]
    assert harness.format_table(rows, cols) == (
        "name             time ms speedup\n"
        "--------------------------------\n"
        "dense               12.3   1.00x\n"
        "block-sparse 90%     3.0     n/a")
    # fixed widths: a row printed on its own lines up with the header printed before it
    wide = tuple(harness.Column(c.key, c.header, c.fmt, c.align, 10, c.missing) for c in cols)
    head = harness.format_table([], wide).splitlines()[0]
    line = harness.format_table(rows[:1], wide, header=False)
    assert head == "name          time ms    speedup"
    assert line == "dense            12.3      1.00x"


def test_write_json_refuses_existing_file_without_force_and_leaves_no_temporary(tmp_path):
    out = tmp_path / "r.json"
    harness.write_json(str(out), {"a": 1})
    assert json.loads(out.read_text()) == {"a": 1}
    with pytest.raises(FileExistsError, match=f"--json: {out} exists; pass --force"):
        harness.write_json(str(out), {"a": 2})
    assert json.loads(out.read_text()) == {"a": 1}          # untouched
    harness.write_json(str(out), {"a": 3}, force=True)
    assert json.loads(out.read_text()) == {"a": 3}
    assert os.listdir(tmp_path) == ["r.json"]               # the temporary sibling was renamed, not left
    with pytest.raises(FileNotFoundError, match="--json: folder"):
        harness.write_json(str(tmp_path / "missing" / "r.json"), {})


def _common(argv, **kw):
    p = argparse.ArgumentParser()
    harness.add_common_arguments(p, **kw)
    return p.parse_args(argv)


def test_common_arguments_and_setup(tmp_path):
    before = torch.get_num_threads()
    try:
        args = _common(["--threads", "1"], threads=2)
        assert harness.setup(args) == torch.device("cpu") and torch.get_num_threads() == 1
        assert _common([], threads=2).threads == 2 and _common([]).threads is None
    finally:
        torch.set_num_threads(before)
    with pytest.raises(ValueError, match="--threads: expected an integer >= 1, got 0"):
        harness.setup(_common(["--threads", "0"]))
    existing = tmp_path / "x.json"
    existing.write_text("{}")
    with pytest.raises(FileExistsError, match="--json: .* exists; pass --force"):
        harness.setup(_common(["--json", str(existing)]))
    harness.setup(_common(["--json", str(existing), "--force"]))
    harness.setup(_common(["--json", str(existing)]), json_exists_ok=True)
    with pytest.raises(FileNotFoundError, match="--json: folder"):     # found before the work, not after
        harness.setup(_common(["--json", str(tmp_path / "no" / "x.json")]), json_exists_ok=True)
    with pytest.raises(SystemExit):                          # a CPU-only benchmark has no --device cuda
        _common(["--device", "cuda"])
    assert harness.config(argparse.Namespace(a=1, _run=print)) == {"a": 1}


def test_csv_arg():
    assert harness.csv_arg(" 1, 2,,3 ", int, "--blocks") == [1, 2, 3]
    with pytest.raises(ValueError, match="--blocks: expected a comma-separated list, got 'a,b'"):
        harness.csv_arg("a,b", int, "--blocks")
    with pytest.raises(ValueError, match="--blocks: expected at least one value, got ','"):
        harness.csv_arg(",", int, "--blocks")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without CUDA")
def test_setup_says_cuda_is_missing():
    with pytest.raises(ValueError, match="--device cuda: no CUDA device visible"):
        harness.setup(_common(["--device", "cuda"], devices=("cpu", "cuda")))


def test_bench_help_lists_every_benchmark_once_with_one_line():
    assert tuple(BENCHES) == NAMES
    out = subprocess.run([sys.executable, "-m", "sparse", "bench", "--help"], capture_output=True, text=True,
                         env={**os.environ, "COLUMNS": "100"})
    assert out.returncode == 0
    lines = out.stdout.splitlines()
    for name in NAMES:
        mine = [ln for ln in lines if ln.split()[:1] == [name]]
        assert len(mine) == 1 and len(mine[0].split()) > 2, name   # the name and its description, one line


@pytest.mark.parametrize("name", NAMES)
def test_each_benchmark_help(name, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["bench", name, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert f"usage: sparse bench {name}" in out
    for common in ("--threads", "--json", "--force", "--device"):
        assert common in out


def test_unknown_benchmark_is_a_one_line_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["bench", "nope"])
    assert exc.value.code == 2
    assert "invalid choice: 'nope'" in capsys.readouterr().err


def test_bench_modules_have_no_entry_point_of_their_own():
    import importlib

    for module in BENCHES.values():
        m = importlib.import_module(module)
        assert not hasattr(m, "main") and m.DESCRIPTION and callable(m.run) and callable(m.add_arguments)


def test_csv_choices_names_the_option_and_the_known_names():
    assert harness.csv_choices("a, b", {"a": 1, "b": 2}, "--x") == ["a", "b"]
    with pytest.raises(ValueError, match=r"--x: expected names from a, b, got 'c'"):
        harness.csv_choices("a,c", {"a": 1, "b": 2}, "--x")
    with pytest.raises(ValueError, match="--x: expected at least one value"):
        harness.csv_choices(" , ", ("a",), "--x")


def test_time_interleaved_alternates_and_times_every_callable():
    calls = []
    out = harness.time_interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
                                   repeats=3, warmup=1)
    assert calls == ["a", "b"] * 4                      # one warm-up round, then three timed rounds
    assert set(out) == {"a", "b"} and all(len(t.times_ms) == 3 for t in out.values())
    with pytest.raises(ValueError, match="repeats, warmup"):
        harness.time_interleaved({"a": lambda: None}, repeats=0)
