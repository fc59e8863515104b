"""``sparse bench convert`` at a tiny size: the worker child process runs through ``sparse bench convert``."""
import json

import pytest

from sparse.cli import main


def test_bench_convert_tiny_synthetic(tmp_path, capsys):
    out = tmp_path / "c.json"
    argv = ["bench", "convert", "--size-mb", "0.5", "--largest-mb", "0.1", "--no-minilm", "--threads", "1",
            "--workdir", str(tmp_path), "--json", str(out)]
    assert main(argv) == 0
    rows = json.loads(out.read_text())
    assert [(r["checkpoint"], r["variant"]) for r in rows] == [("synthetic", "2:4 n:m")]
    r = rows[0]
    assert r["mb"] >= 0.5                                    # the whole synthetic checkpoint was read
    assert r["mb_s"] == pytest.approx(r["mb"] / r["seconds"])
    assert r["ratio_to_copy"] == pytest.approx(r["mb_s"] / r["copy_mb_s"])
    assert 0.5 < r["kept_magnitude_ratio"] <= 1.0            # 50 % dense input: 2:4 keeps most of |w|
    assert "MB/s" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.json"]   # temporary files cleaned up
    assert main(argv) == 2
    assert "exists; pass --force" in capsys.readouterr().err
