"""``sparse bench blocksparse-gpu``: its measuring code run on CPU tensors by triton's interpreter, and its errors."""
import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch

from sparse.cli import main

SCRIPT = """
import json
import torch
from sparse.bench.blocksparse_gpu import kernel_rows, linear_rows
from sparse.ops import last_backend
k = kernel_rows(64, 64, 64, [32], [0.5], torch.float32, 1, 0, device="cpu")
ran_k = last_backend("block_sparse.sdd")
lin = linear_rows(8, [(64, 32)], [32], [0.5], torch.float32, 1, 0, device="cpu")
print(json.dumps({"kernels": k, "linear": lin, "ran": [ran_k, last_backend("block_sparse.dds")]}))
"""


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton not installed")
def test_rows_measure_the_triton_kernels_in_the_interpreter():
    # a child process: triton reads TRITON_INTERPRET when the kernels are first decorated
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                         env={**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["ran"] == ["triton", "triton"]                 # the triton backend was forced and ran
    assert [k["kernel"] for k in r["kernels"]] == ["dsd", "dds", "sdd"]
    for k in r["kernels"]:
        assert 0.0 < k["density"] <= 1.0 and isinstance(k["ms"], float) and isinstance(k["dense_ms"], float)
        assert k["tflops"] == pytest.approx(2 * 64 ** 3 * k["density"] / k["ms"] / 1e9)
        assert k["speedup"] == pytest.approx(k["dense_ms"] / k["ms"])
    (lin,) = r["linear"]
    assert (lin["in"], lin["out"], lin["block"]) == (64, 32, 32)
    assert lin["speedup"] == pytest.approx(lin["dense_ms"] / lin["sparse_ms"])


@pytest.mark.parametrize("argv,msg", [
    (["--blocks", "48"], "--blocks: expected block sizes among 16, 32, 64, 128, got 48"),
    (["--sparsities", "1.0"], "--sparsities: expected values in [0, 1), got 1.0"),
    (["--mnk", "100,64,64", "--blocks", "32"], "--mnk: 100,64,64 is not a multiple of block 32"),
    (["--mnk", "1,2"], "--mnk: expected ';'-separated M,N,K triples"),
])
def test_bad_arguments_are_one_line_errors(argv, msg, capsys):
    assert main(["bench", "blocksparse-gpu", *argv]) == 2
    err = capsys.readouterr().err
    assert msg in err and "Traceback" not in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without CUDA")
def test_needs_cuda(capsys):
    assert main(["bench", "blocksparse-gpu"]) == 2
    assert "--device cuda: no CUDA device visible" in capsys.readouterr().err
