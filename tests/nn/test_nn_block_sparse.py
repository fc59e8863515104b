"""BlockSparseLinear: outputs and gradients vs the masked dense Linear (csrc-cpu and pure-torch backends),
conversions, errors, the Triton backend (interpreter), SparseOptimizer, and a drop-in replacement inside
the real pretrained MiniLM."""
import copy
import importlib.util
import sys

import pytest
import torch
import torch.nn as nn

from sparse.nn import BlockSparseLinear
from sparse.ops import BlockLayout, _bsr_cpu, last_backend, use_backend

TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def _close(out, ref, dtype, tol=None):
    assert out.shape == ref.shape
    scale = max(ref.abs().max().item(), 1.0)
    err = (out.float() - ref.float()).abs().max().item()
    tol = TOL[dtype] if tol is None else tol
    assert err <= tol * scale, f"max error {err:.3g} > {tol:.1g} * {scale:.3g}"


def _mask(r, c, p=0.5, seed=0):
    g = torch.Generator().manual_seed(seed)
    m = torch.rand(r, c, generator=g) < p
    m[0, 0] = True
    m[-1] = False  # an empty block row: those outputs are the bias only
    return m


def _masked_linear(lin, mask, block):
    ref = copy.deepcopy(lin)
    keep = mask.repeat_interleave(block, 0).repeat_interleave(block, 1).to(lin.weight.dtype)
    with torch.no_grad():
        ref.weight.mul_(keep)
    return ref, keep


@pytest.mark.parametrize("block", [16, 32])
@pytest.mark.parametrize("bias", [True, False])
def test_forward_and_gradients_match_masked_dense(block, bias):
    torch.manual_seed(block)
    lin = nn.Linear(4 * block, 3 * block, bias=bias)
    mask = _mask(3, 4, seed=block)
    mod = BlockSparseLinear.from_dense(lin, mask)
    ref, keep = _masked_linear(lin, mask, block)
    x = torch.randn(2, 3, 5, 4 * block)            # any leading shape
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    y, y_ref = mod(x1), ref(x2)
    _close(y.detach(), y_ref.detach(), torch.float32)
    g = torch.randn_like(y)
    y.backward(g)
    y_ref.backward(g)
    _close(x1.grad, x2.grad, torch.float32)
    _close(mod.dense_weight(), ref.weight, torch.float32)
    _close(mod.layout().to_dense(mod.weight_data.grad), ref.weight.grad * keep, torch.float32)
    if bias:
        _close(mod.bias.grad, ref.bias.grad, torch.float32)
    # dW (and dbias, when there is one, from the same pass) ran on a CPU backend; csrc-cpu where sparse._C is built
    assert last_backend("block_sparse.sdd_rowsum" if bias else "block_sparse.sdd") in ("csrc-cpu", "torch")


def test_bf16_forward_backward():
    torch.manual_seed(0)
    lin = nn.Linear(64, 96).to(torch.bfloat16)
    mask = _mask(3, 2, seed=1)
    mod = BlockSparseLinear.from_dense(lin, mask)
    ref, _ = _masked_linear(lin.float(), mask, 32)
    x = torch.randn(7, 64).to(torch.bfloat16)
    x1 = x.clone().requires_grad_()
    x2 = x.float().requires_grad_()
    y = mod(x1)
    assert y.dtype == torch.bfloat16
    y_ref = ref(x2)
    _close(y.detach(), y_ref.detach(), torch.bfloat16)
    y.float().sum().backward()
    y_ref.sum().backward()
    _close(x1.grad, x2.grad, torch.bfloat16)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("block", [32, 64])
def test_native_cpu_backend_matches_torch_backend_and_masked_dense(dtype, block):
    """Forward and both gradients with the C++ kernels forced vs the pure-torch path vs fp32 masked dense:
    67 tokens (not a multiple of any kernel tile), an empty block row and an empty block column."""
    why = _bsr_cpu.native_usable(torch.zeros(1, dtype=dtype), BlockLayout.from_mask(torch.ones(1, 1, dtype=torch.bool), block))
    if why is not None:
        pytest.skip(why)
    torch.manual_seed(block)
    lin = nn.Linear(5 * block, 4 * block)
    mask = _mask(4, 5, seed=block)
    mask[:, 1] = False
    ref, keep = _masked_linear(lin, mask, block)
    mod = BlockSparseLinear.from_dense(lin, mask).to(dtype)
    x = torch.randn(67, 5 * block)
    g = torch.randn(67, 4 * block)
    x_ref = x.to(dtype).float().requires_grad_()
    ref.weight.data = ref.weight.data.to(dtype).float()
    ref.bias.data = ref.bias.data.to(dtype).float()
    y_ref = ref(x_ref)
    y_ref.backward(g.to(dtype).float())
    results = {}
    for backend in ("csrc-cpu", "torch"):
        mod.zero_grad()
        xb = x.to(dtype).requires_grad_()
        with use_backend(backend):
            y = mod(xb)
            y.backward(g.to(dtype))
        assert last_backend("block_sparse.dds") == backend and last_backend("block_sparse.linear") == backend
        assert last_backend("block_sparse.sdd_rowsum") == backend     # dW and the bias gradient in one pass
        assert y.dtype == dtype and xb.grad.dtype == dtype and mod.weight_data.grad.dtype == dtype
        _close(y.detach(), y_ref.detach(), dtype)
        _close(xb.grad, x_ref.grad, dtype)
        _close(mod.layout().to_dense(mod.weight_data.grad), ref.weight.grad * keep, dtype)
        results[backend] = (y.detach().float(), xb.grad.float(), mod.weight_data.grad.float())
    for a, b in zip(results["csrc-cpu"], results["torch"]):
        _close(a, b, dtype)


def test_to_dense_and_state_dict_round_trip():
    lin = nn.Linear(64, 64)
    mask = _mask(4, 4, seed=3)
    mod = BlockSparseLinear.from_dense(lin, mask)
    assert mod.block == 16 and torch.equal(mod.block_mask, mask)
    dense = mod.to_dense()
    x = torch.randn(3, 64)
    _close(dense(x), mod(x), torch.float32)
    other = BlockSparseLinear(64, 64, mask)
    other.load_state_dict(mod.state_dict())
    assert torch.equal(other(x), mod(x))
    assert "block=16" in repr(mod)


def test_bad_arguments_rejected():
    lin = nn.Linear(64, 96)
    with pytest.raises(ValueError, match="block_mask: expected a 2-D torch.bool tensor"):
        BlockSparseLinear.from_dense(lin, torch.ones(3, 2))
    with pytest.raises(ValueError, match=r"block_mask: expected shape \[out/B, in/B\].*got \(3, 3\)"):
        BlockSparseLinear.from_dense(lin, torch.ones(3, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="implies block size 8"):
        BlockSparseLinear.from_dense(nn.Linear(16, 16), torch.ones(2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="linear: expected a torch.nn.Linear, got Conv1d"):
        BlockSparseLinear.from_dense(nn.Conv1d(2, 2, 1), torch.ones(1, 1, dtype=torch.bool))
    mod = BlockSparseLinear.from_dense(lin, torch.ones(3, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"x: expected a tensor \[..., in_features=64\], got \(2, 63\)"):
        mod(torch.randn(2, 63))
    with pytest.raises(ValueError, match="x: expected dtype torch.float32"):
        mod(torch.randn(2, 64, dtype=torch.bfloat16))


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton not installed")
def test_triton_backend_in_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    kern = sys.modules.get("triton_kernels._block_sparse_kernels")
    if kern is not None and type(kern._dds_kernel).__name__ != "InterpretedFunction":
        pytest.skip("kernels were compiled for CUDA earlier in this process")
    torch.manual_seed(0)
    lin = nn.Linear(48, 32)
    mask = _mask(2, 3, seed=5)
    mod = BlockSparseLinear.from_dense(lin, mask)
    x = torch.randn(2, 3, 48)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    with use_backend("triton"):
        y = mod(x1)
        y.sum().backward()
        assert last_backend("block_sparse.dds") == "triton" and last_backend("block_sparse.sdd") == "triton"
    g_tr = mod.weight_data.grad.clone()
    mod.weight_data.grad = None
    y_cpu = mod(x2)
    y_cpu.sum().backward()
    _close(y.detach(), y_cpu.detach(), torch.float32)
    _close(x1.grad, x2.grad, torch.float32)
    _close(g_tr, mod.weight_data.grad, torch.float32)


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = BlockSparseLinear.from_dense(nn.Linear(64, 64), _mask(4, 4, seed=2))
        self.proj = nn.Linear(64, 8)

    def forward(self, x):
        return self.proj(torch.relu(self.blocks(x)))


def test_with_sparse_optimizer():
    from sparse.optim import SparseOptimizer

    torch.manual_seed(0)
    net = _Net()
    recipe = {"name": "r", "pruning": [{
        "name": "proj", "targets": {"types": ["Linear"], "include": ["proj"]},
        "pattern": {"type": "nm", "n": 2, "m": 4}, "schedule": {"type": "oneshot", "at_step": 0}}]}
    opt = SparseOptimizer(torch.optim.AdamW(net.parameters(), lr=1e-2), net, recipe)
    assert list(opt.masks) == ["proj.weight"]
    before = net.blocks.weight_data.detach().clone()
    x, target = torch.randn(16, 64), torch.randint(0, 8, (16,))
    losses = []
    for _ in range(5):
        loss = nn.functional.cross_entropy(net(x), target)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert not torch.equal(before, net.blocks.weight_data)           # the block-sparse layer trains
    assert net.blocks.weight_data.shape == before.shape               # ...and stays block-sparse
    assert bool(((net.proj.weight != 0) | ~opt.masks["proj.weight"]).all())
    assert bool((net.proj.weight[~opt.masks["proj.weight"]] == 0).all())


def test_real_minilm_block_sparse_ffn_matches_masked_dense():
    transformers = pytest.importorskip("transformers")
    from sparse.data import minilm_path

    path = minilm_path()
    tok = transformers.AutoTokenizer.from_pretrained(path)
    model = transformers.AutoModel.from_pretrained(path).eval()
    dense = copy.deepcopy(model)
    g = torch.Generator().manual_seed(0)
    for i in (0, 3):
        ffn = model.encoder.layer[i]
        for name, owner in (("dense", ffn.intermediate), ("dense", ffn.output)):
            lin = getattr(owner, name)
            mask = torch.rand(lin.out_features // 32, lin.in_features // 32, generator=g) < 0.3
            setattr(owner, name, BlockSparseLinear.from_dense(lin, mask))
            ref_lin = getattr(getattr(dense.encoder.layer[i], "intermediate" if owner is ffn.intermediate
                                      else "output"), name)
            keep = mask.repeat_interleave(32, 0).repeat_interleave(32, 1)
            with torch.no_grad():
                ref_lin.weight.mul_(keep)
    assert isinstance(model.encoder.layer[3].output.dense, BlockSparseLinear)
    batch = tok(["Shares rose sharply after the bank's results.", "The match ended in a draw."],
                padding=True, return_tensors="pt")
    out = model(**batch).last_hidden_state
    ref = dense(**batch).last_hidden_state
    _close(out.detach(), ref.detach(), torch.float32, tol=1e-4)
    out.pow(2).mean().backward()
    ref.pow(2).mean().backward()
    sp = model.encoder.layer[0].intermediate.dense
    ref_w = dense.encoder.layer[0].intermediate.dense.weight
    _close(sp.layout().to_dense(sp.weight_data.grad), ref_w.grad * sp.layout().to_dense(
        torch.ones_like(sp.weight_data)), torch.float32, tol=1e-4)


def test_cpu_benchmark_cli_writes_json_and_refuses_to_clobber(tmp_path, capsys):
    import json

    from sparse.cli import main

    out = tmp_path / "bench.json"
    argv = ["bench", "blocksparse", "--tokens", "64", "--shapes", "64:128", "--blocks", "32",
            "--sparsities", "0.5,0.9", "--repeats", "1", "--threads", "1", "--json", str(out)]
    assert main(argv) == 0
    payload = json.loads(out.read_text())
    rows = payload["rows"]
    assert [(r["sparsity"], r["backend"]) for r in rows] == [(0.5, "csrc-cpu"), (0.5, "torch"), (0.9, "csrc-cpu"), (0.9, "torch")]
    assert payload["cpu"]["native_kernels"]
    native = _bsr_cpu.native_usable(torch.zeros(1, dtype=torch.bfloat16),
                                    BlockLayout.from_mask(torch.ones(1, 1, dtype=torch.bool), 32)) is None
    ran = [r for r in rows if r["backend"] == "torch" or native]
    for r in rows:
        if r not in ran:  # bf16 without AMX/AVX512-BF16: reported, not crashed
            assert r["sparse_ms"] is None and r["speedup"] is None and "cannot run" in r["unavailable"]
    # no speed claim here: only that the report is complete and its ratio is the one its times give
    assert all(isinstance(r["dense_ms"], float) and isinstance(r["sparse_ms"], float) for r in ran)
    assert all(r["speedup"] == pytest.approx(r["dense_ms"] / r["sparse_ms"]) for r in ran)
    assert {(r["backend"], r["block"]) for r in payload["summary"]} == {("csrc-cpu", 32), ("torch", 32)}
    assert "speedup" in capsys.readouterr().out
    assert main(argv) == 2                                     # exists: refused without --force
    assert "exists; pass --force" in capsys.readouterr().err
    assert main(argv[:-2] + ["--sparsities", "1.5"]) == 2
    assert "--sparsities: expected values in [0, 1), got 1.5" in capsys.readouterr().err
    assert main(argv[:-2] + ["--backends", "csrc-cpu,gpu"]) == 2
    assert "--backends: expected a comma list of csrc-cpu, torch, got 'gpu'" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without CUDA")
def test_gpu_benchmark_says_it_needs_cuda(capsys):
    from sparse.cli import main

    assert main(["bench", "blocksparse-gpu"]) == 2
    assert "no CUDA device" in capsys.readouterr().err


def test_follows_cpu_autocast_like_nn_linear():
    """Under bf16 autocast an fp32 layer computes in bf16 (as nn.Linear does) and its fp32 master
    block data gets the gradient; outside autocast a dtype mismatch is still refused."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 32)
    bm = torch.tensor([[True, False, True, False], [True, True, False, True]])  # 16 x 16 blocks
    layer = BlockSparseLinear.from_dense(lin, bm)
    dense = torch.nn.Linear(64, 32)
    with torch.no_grad():
        dense.weight.copy_(lin.weight * bm.repeat_interleave(16, 0).repeat_interleave(16, 1))
        dense.bias.copy_(lin.bias)
    x = torch.randn(4, 5, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, ref = layer(x), dense(x)
    assert y.dtype == ref.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), ref.float(), atol=3e-2, rtol=2e-2)
    y.float().sum().backward()
    assert layer.weight_data.grad is not None and layer.weight_data.grad.dtype == torch.float32
    with pytest.raises(ValueError, match="x: expected dtype"):
        layer(x.bfloat16())


def test_cpu_benchmark_ffn_shapes_sparsity_alias_and_isa(tmp_path, capsys):
    """An FFN shape (two Linears timed as one), --sparsity as an alias, --isa checked against this CPU."""
    import json

    from sparse.cli import main
    from sparse.bench import blocksparse

    out = tmp_path / "ffn.json"
    argv = ["bench", "blocksparse", "--tokens", "8", "--shapes", "ffn:64:128", "--blocks", "32", "--sparsity", "0.5",
            "--repeats", "1", "--threads", "1", "--backends", "torch", "--json", str(out)]
    assert main(argv) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(r["kind"], r["in"], r["out"], r["tokens"]) for r in rows] == [("ffn", 64, 128, 8)]
    assert "ffn:64:128 64x128 T8" in capsys.readouterr().out
    assert [s[:4] for s in blocksparse._shapes("minilm-ffn,bert-ffn,up")] == [
        ("minilm-ffn", "ffn", 384, 1536), ("bert-ffn", "ffn", 768, 3072), ("up", "linear", 768, 3072)]
    assert blocksparse._shapes("minilm-ffn")[0][4] == 2048
    assert main(argv[:-2] + ["--shapes", "ffn:64"]) == 2
    assert "--shapes: expected up, down, minilm-ffn, bert-ffn, IN:OUT or ffn:H:F" in capsys.readouterr().err
    missing = [k for k in blocksparse.ISAS if k not in _bsr_cpu.native_kernels()]
    if missing:
        assert main(argv[:-2] + ["--isa", missing[0]]) == 2
        assert "--isa: expected a kernel family this CPU has" in capsys.readouterr().err
