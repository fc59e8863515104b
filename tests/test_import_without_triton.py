"""``import sparse`` and the block-sparse layer work on a machine without triton (and without the
triton_kernels package): the CPU backends run, and the dispatcher and ``sparse.backends()`` say why
triton is not used."""
import json
import subprocess
import sys
import textwrap

from testkit import has_ext

CODE = textwrap.dedent("""
    import json, sys
    sys.modules["triton"] = None          # import triton / import triton_kernels raise ImportError
    sys.modules["triton_kernels"] = None
    import torch
    import sparse, sparse.nn, sparse.ops
    from sparse.nn import BlockSparseLinear
    from sparse.ops import BackendUnavailable, last_backend, use_backend

    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 32)
    mask = torch.tensor([[True, False, True, True], [False] * 4])  # 16 x 16 blocks, an empty block row
    layer = BlockSparseLinear.from_dense(lin, mask)
    dense = layer.to_dense()
    x = torch.randn(5, 64)
    out = {}
    for backend in ["torch"] + (["csrc-cpu"] if sys.argv[1] == "1" else []):
        layer.zero_grad()
        with use_backend(backend):
            y = layer(x)
            y.sum().backward()
        ref = dense(x)
        out[backend] = {"ran": last_backend("block_sparse.linear"),
                        "err": float((y - ref).abs().max()),
                        "grad": layer.weight_data.grad is not None}
    layer(x)  # automatic choice
    out["auto"] = last_backend("block_sparse.linear")
    try:
        with use_backend("triton"):
            layer(x)
        out["forced"] = "ran"
    except BackendUnavailable as exc:
        out["forced"] = str(exc)
    info = sparse.backends()["triton"]
    out["triton"] = [info.available, info.reason]
    out["loaded"] = sorted(m for m in ("triton", "triton_kernels") if sys.modules.get(m) is not None)
    print(json.dumps(out))
""")


def test_block_sparse_linear_runs_on_cpu_without_triton():
    native = has_ext()
    res = subprocess.run([sys.executable, "-c", CODE, "1" if native else "0"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    for backend in ["torch"] + (["csrc-cpu"] if native else []):
        assert out[backend]["ran"] == backend and out[backend]["grad"]
        assert out[backend]["err"] < 1e-5
    assert out["auto"] == ("csrc-cpu" if native else "torch")
    assert "triton: triton is not installed" in out["forced"]
    assert out["triton"][0] is False and "triton not importable" in out["triton"][1]
    assert out["loaded"] == []
