"""``sparse bench sparse24`` without a GPU: kept-magnitude table, GPU part reported unavailable with its reason."""
import json

import pytest
import torch

from sparse.cli import main
from sparse.ops import sparse24 as ops24

pytestmark = pytest.mark.skipif(ops24.native_reason() is not None, reason=str(ops24.native_reason()))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the report without CUDA")
def test_cpu_reports_gpu_unavailable(tmp_path, capsys):
    out = tmp_path / "r.json"
    assert main(["bench", "sparse24", "--device", "cuda", "--no-minilm", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "GPU timing: unavailable (no CUDA device visible" in text
    r = json.loads(out.read_text())
    assert r["gpu"]["available"] is False and "CUDA" in r["gpu"]["reason"]
    (kept,) = r["kept"]
    assert kept["weights"] == "random" and kept["exact"] > kept["greedy"] and 0 < kept["greedy_incomplete_tiles"] < 1


def test_bad_arguments(capsys):
    assert main(["bench", "sparse24", "--dtypes", "fp32"]) != 0
    assert "--dtypes: expected names from bf16, fp16" in capsys.readouterr().err
    assert main(["bench", "sparse24", "--prune-sizes", "100"]) != 0
    assert "--prune-sizes" in capsys.readouterr().err
