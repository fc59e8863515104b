"""``sparse convert`` and ``sparse inspect`` command lines."""
import json

import torch
from safetensors.torch import load_file, save_file

from sparse.cli import main


def _src(tmp_path):
    w = torch.randn(8, 16)
    w[w.abs() < 0.4] = 0
    path = tmp_path / "in.safetensors"
    save_file({"enc.l.weight": w, "enc.l.bias": torch.randn(8), "emb.embeddings.weight": torch.randn(5, 8)}, str(path))
    return path


def test_convert_table_report_and_inspect(tmp_path, capsys):
    src = _src(tmp_path)
    dst = tmp_path / "out.safetensors"
    rc = main(["convert", str(src), str(dst), "--pattern", "2:4", "--report", str(tmp_path / "r.json"),
               "--no-progress"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "enc.l.weight" in out and "TOTAL" in out
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["pattern"] == "2:4" and rep["totals"]["converted_tensors"] == 1
    assert (load_file(str(dst))["enc.l.weight"].reshape(8, 4, 4) != 0).sum(-1).max() <= 2
    # inspect the result: the converted weight satisfies 2:4, the embedding does not
    assert main(["inspect", str(dst), "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert "2:4" in rows["enc.l.weight"]["nm"] and rows["emb.embeddings.weight"]["nm"] == []
    assert rows["enc.l.weight"]["density"] <= 0.5
    assert main(["inspect", str(src)]) == 0
    assert "enc.l.weight" in capsys.readouterr().out


def test_convert_transposable_json(tmp_path, capsys):
    src = _src(tmp_path)
    w = torch.randn(16, 16)
    save_file({"l.weight": w}, str(tmp_path / "sq.safetensors"))
    assert main(["convert", str(tmp_path / "sq.safetensors"), str(tmp_path / "o.safetensors"), "--transposable",
                 "--method", "exact", "--json", "--no-progress"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["transposable"] and rep["tensors"][0]["density_after"] == 0.5
    assert main(["inspect", str(tmp_path / "o.safetensors"), "--json"]) == 0
    assert "2:4" in json.loads(capsys.readouterr().out)[0]["transposable"]
    del src


def test_cli_errors_are_one_line_exit_2(tmp_path, capsys):
    src = _src(tmp_path)
    dst = tmp_path / "out.safetensors"
    assert main(["convert", str(src), str(dst), "--pattern", "5:4", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "pattern" in err and len(err.strip().splitlines()) == 1
    assert main(["convert", str(src), str(dst), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["convert", str(src), str(dst), "--no-progress"]) == 2
    assert "--force" in capsys.readouterr().err
    assert main(["convert", str(src), str(dst), "--force", "--no-progress"]) == 0
    assert main(["convert", str(src), str(tmp_path / "x.safetensors"), "--calibration-file", "t.txt"]) == 2
    assert "--calibration-file" in capsys.readouterr().err
    assert main(["inspect", str(tmp_path / "nope.safetensors")]) == 2


def test_report_naming_dst_or_src_is_refused_before_work(tmp_path, capsys, monkeypatch):
    """Once exited 0 with DST holding the JSON report instead of the checkpoint."""
    monkeypatch.chdir(tmp_path)  # for the relative spelling
    src = _src(tmp_path)
    before = src.read_bytes()
    dst = tmp_path / "out.safetensors"
    for argv in (["--report", str(dst)], ["--report", "./" + str(dst.relative_to(tmp_path)), "--force"],
                 ["--report", str(src), "--force"]):
        rc = main(["convert", str(src), str(dst), *argv, "--no-progress"])
        err = capsys.readouterr().err
        assert rc == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
        assert "--report" in err and ("dst" in err or "src" in err) and "same file" in err
        assert not dst.exists() and src.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.safetensors"]
