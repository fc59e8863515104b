"""``sparse bench dropout``: the correctness gate, the records and ratios, bad arguments."""
import json

import pytest
import torch

import sparse.ops as ops
from sparse.bench import dropout as bd
from sparse.cli import main


def test_records_are_complete_and_ratios_are_the_times(tmp_path, capsys):
    out = tmp_path / "d.json"
    assert main(["bench", "dropout", "--shapes", "minilm-hidden", "--dtypes", "bf16,fp32", "--repeats", "1",
                 "--warmup", "0", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    payload = json.loads(out.read_text())
    assert payload["machine"]["cpu_model"] in text
    recs = payload["records"]
    assert [(r["shape"], r["dtype"]) for r in recs] == [("minilm-hidden", "bf16"), ("minilm-hidden", "fp32")]
    for r in recs:
        assert r["correct"] is True and isinstance(r["backend"], str) and r["backend"]
        for key in ("torch_fwd_ms", "fast_fwd_ms", "torch_fwd_bwd_ms", "fast_fwd_bwd_ms"):
            assert isinstance(r[key], float) and r[key] > 0, key
        assert r["fwd_speedup"] == pytest.approx(r["torch_fwd_ms"] / r["fast_fwd_ms"])
        assert r["fwd_bwd_speedup"] == pytest.approx(r["torch_fwd_bwd_ms"] / r["fast_fwd_bwd_ms"])
        assert len(r["timings"]["fast"]["fwd"]["times_ms"]) == 1


def test_check_accepts_the_kernel_and_catches_a_wrong_one(monkeypatch):
    x = torch.randn(64, 256)
    assert bd.check(x, 0.1) is None
    # a dropout that forgets the scaling, or one that always draws the same mask, is refused
    monkeypatch.setattr(ops, "dropout", lambda t, p: t * (torch.rand_like(t) > p))
    assert "x / (1 - p)" in bd.check(x, 0.1)
    fixed = torch.rand(64, 256, generator=torch.Generator().manual_seed(0)) > 0.1
    monkeypatch.setattr(ops, "dropout", lambda t, p: t * fixed / (1 - p))
    assert bd.check(x, 0.1) == "two calls drew the same mask"
    monkeypatch.setattr(ops, "dropout", lambda t, p: t * (torch.rand_like(t) > 0.5) / (1 - p))
    assert "kept" in bd.check(x, 0.1)


def test_failed_check_times_nothing(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(bd, "check", lambda x, p: "broken on purpose")
    out = tmp_path / "d.json"
    assert main(["bench", "dropout", "--shapes", "minilm-hidden", "--dtypes", "fp32", "--json", str(out)]) == 1
    assert "check failed: broken on purpose; nothing timed" in capsys.readouterr().out
    assert not out.exists()


@pytest.mark.parametrize("argv, message", [
    (["--shapes", "huge"], "--shapes: expected names from"),
    (["--dtypes", "int8"], "--dtypes: expected names from"),
    (["--p", "1.0"], "--p: expected a probability in (0, 1), got 1.0"),
    (["--repeats", "0"], "--repeats, --warmup: expected >= 1"),
    (["--threads", "0"], "--threads: expected an integer >= 1"),
])
def test_bad_arguments(argv, message, capsys):
    assert main(["bench", "dropout", *argv]) == 2
    assert message in capsys.readouterr().err


def test_check_is_not_fooled_by_exact_zeros():
    x = torch.randn(64, 256)
    x[0, :50] = 0.0           # a kept zero reads as dropped from the output alone
    assert bd.check(x, 0.1) is None
    assert bd.check(x.bfloat16(), 0.1) is None
