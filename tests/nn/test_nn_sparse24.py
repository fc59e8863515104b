"""SparseLinear24 (CPU fallback: compressed numerics, masked-dense matmuls) and sparsify_24, SparseOptimizer masks."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from sparse.masks import is_nm, is_transposable, transposable_mask
from sparse.nn import SparseLinear24, sparsify_24
from sparse.ops import mvue_24
from sparse.ops import sparse24 as ops24

pytestmark = pytest.mark.skipif(ops24.native_reason() is not None, reason=str(ops24.native_reason()))


def reference(lin_w, bias, mask, x, gy):
    """Masked dense: W_param -> W_param * mask -> linear; returns y, dX, dW, db (fp32)."""
    w = lin_w.detach().float().clone().requires_grad_()
    b = None if bias is None else bias.detach().float().clone().requires_grad_()
    xr = x.detach().float().clone().requires_grad_()
    y = nn.functional.linear(xr, w * mask, b)
    y.backward(gy.float())
    return y.detach(), xr.grad, w.grad, (None if b is None else b.grad)


@pytest.mark.parametrize("transposable", [True, False])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2), (torch.float16, 5e-3)])
def test_outputs_and_gradients_match_masked_dense(transposable, bias, dtype, tol):
    torch.manual_seed(0)
    lin = nn.Linear(128, 64 if transposable else 96, bias=bias).to(dtype)
    w0 = lin.weight.detach().clone()
    mod = SparseLinear24.from_dense(lin, transposable=transposable)
    assert mod.weight is lin.weight and mod.bias is lin.bias  # the same Parameters
    mask = mod.mask
    assert is_transposable(mask, 2, 4) if transposable else is_nm(mask, 2, 4)
    if transposable:
        assert torch.equal(mask, transposable_mask(w0.float(), 2, 4, method="exact"))
    x = torch.randn(3, 7, 128).to(dtype).requires_grad_()
    y = mod(x)
    gy = torch.randn_like(y)
    y.backward(gy)
    y = y.detach()
    yr, gx, gw, gb = reference(w0, lin.bias, mask, x, gy)
    scale = lambda t: t.abs().max() + 1e-6  # noqa: E731
    assert y.shape == (3, 7, mod.out_features) and y.dtype == dtype
    assert float((y.float() - yr).abs().max() / scale(yr)) <= tol
    assert float((x.grad.float() - gx).abs().max() / scale(gx)) <= tol
    assert float((mod.weight.grad.float() - gw).abs().max() / scale(gw)) <= tol
    assert bool((mod.weight.grad[~mask] == 0).all())
    if bias:
        assert float((mod.bias.grad.float() - gb).abs().max() / scale(gb)) <= tol
    # the forward's weight is the compressed one: exactly W * mask
    assert torch.equal(mod.dense_weight(), w0 * mask)


def test_mvue_weight_gradient_is_the_mvue_of_dy():
    torch.manual_seed(1)
    mod = SparseLinear24.from_dense(nn.Linear(64, 64), grad_sparsity="mvue")
    x = torch.randn(10, 64)  # 10 tokens: padded to 12 for the 2:4 groups along tokens
    gy = torch.randn(10, 64)
    mod.generator = torch.Generator().manual_seed(5)
    mod(x).backward(gy)
    g = torch.nn.functional.pad(gy.t(), (0, 2))
    expect = (mvue_24(g.contiguous(), torch.Generator().manual_seed(5)) @ torch.nn.functional.pad(x, (0, 0, 0, 2)))
    assert torch.allclose(mod.weight.grad, expect * mod.mask, atol=1e-5)
    # unbiased: the mean over many draws approaches the dense masked gradient
    mod.generator = torch.Generator().manual_seed(6)
    acc = torch.zeros_like(mod.weight)
    n = 300
    for _ in range(n):
        mod.weight.grad = None
        mod(x).backward(gy)
        acc += mod.weight.grad
    dense = (gy.t() @ x) * mod.mask
    err = (acc / n - dense).abs().max() / dense.abs().max()
    assert float(err) < 0.15  # ~1/sqrt(300) relative noise on the largest entries


def test_recompress_only_when_weight_or_mask_changes():
    mod = SparseLinear24.from_dense(nn.Linear(64, 64))
    x = torch.randn(4, 64)
    mod(x)
    mod(x)
    assert mod.compressions == 1 and mod.mask_updates == 1
    with torch.no_grad():
        mod.weight.mul_(0.5)  # an optimizer step
    mod(x)
    assert mod.compressions == 2 and mod.mask_updates == 1
    new = transposable_mask(torch.randn(64, 64), 2, 4, method="exact")
    mod.set_mask(new)
    assert torch.equal(mod.mask, new) and bool((mod.weight[~new] == 0).all())
    mod(x)
    assert mod.compressions == 3 and mod.mask_updates == 2


def test_sparse_optimizer_mask_refresh_reaches_the_module():
    from sparse import SparseOptimizer, load_recipe

    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 8))
    recipe = load_recipe({"name": "t", "pruning": [{
        "name": "t24", "pattern": {"type": "nm", "n": 2, "m": 4, "transposable": True},
        "targets": {"include": [r"^0$"]}, "schedule": {"type": "oneshot", "at_step": 0}, "refresh_every": 2}]})
    opt = SparseOptimizer(torch.optim.SGD(model.parameters(), lr=0.5), model, recipe)
    report = sparsify_24(model)  # after the optimizer: the module reuses the Parameter the optimizer steps
    assert report.swapped == ["0"] and "2" in report.skipped
    mod = model[0]
    assert isinstance(mod, SparseLinear24)
    updates = []
    for step in range(6):
        if step == 3:  # the weight moves outside its mask (as SR-STE or a reload would): the next refresh differs
            with torch.no_grad():
                mod.weight.copy_(torch.randn(64, 64))
        x = torch.randn(16, 64)
        model(x).square().mean().backward()
        opt.step()
        opt.zero_grad()
        updates.append(mod.mask_updates)
        assert torch.equal(mod.mask, opt.masks["0.weight"])
        assert bool((mod.weight[~mod.mask] == 0).all())
    # refreshes that give the same mask leave the module alone; the one that changed it reached it (and only it)
    assert updates[:3] == [1, 1, 1] and updates[-1] == 2


def test_sparse_optimizer_non_24_mask_is_refused():
    from sparse import SparseOptimizer, load_recipe

    model = nn.Sequential(nn.Linear(64, 64))
    recipe = load_recipe({"name": "t", "pruning": [{
        "name": "nm", "pattern": {"type": "nm", "n": 1, "m": 4},
        "targets": {"include": [r"^0$"]}, "schedule": {"type": "oneshot", "at_step": 0}, "refresh_every": 1}]})
    opt = SparseOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), model, recipe)
    sparsify_24(model)
    with pytest.raises(ValueError, match="transposable 2:4"):
        for _ in range(3):  # the next 1:4 mask the optimizer sets reaches the module, which refuses it
            model(torch.randn(2, 64)).sum().backward()
            opt.step()


def test_sparse_optimizer_non_24_mask_on_shared_param_raises():
    from sparse.pruning.optim_state import notify_kernel_module

    mod = SparseLinear24.from_dense(nn.Linear(64, 64))
    bad = torch.ones(64, 64, dtype=torch.bool)
    with pytest.raises(ValueError, match="transposable 2:4"):
        notify_kernel_module(mod.weight, bad)
    plain = SparseLinear24.from_dense(nn.Linear(64, 64), transposable=False)
    with pytest.raises(ValueError, match="2:4 mask along dim 1"):
        notify_kernel_module(plain.weight, bad)


def test_sparsify_24_report_and_filter():
    model = nn.Sequential(nn.Linear(64, 128), nn.Linear(128, 64), nn.Linear(64, 10), nn.Linear(64, 64).double())
    report = sparsify_24(model, filter_fn=lambda fqn, m: fqn != "1")
    assert report.swapped == ["0"]
    assert report.skipped["1"] == "excluded by filter_fn"
    assert "out_features % 64" in report.skipped["2"]
    assert "float64" in report.skipped["3"]
    assert isinstance(model[0], SparseLinear24) and type(model[1]) is nn.Linear
    assert "1 Linear(s) swapped" in str(report)


@pytest.mark.parametrize("call, match", [
    (lambda: SparseLinear24.from_dense(nn.Conv1d(4, 4, 1)), "not an nn.Linear"),
    (lambda: SparseLinear24.from_dense(nn.Linear(60, 64)), "in_features % 64"),
    (lambda: SparseLinear24.from_dense(nn.Linear(64, 32)), "out_features % 64"),
    (lambda: SparseLinear24.from_dense(nn.Linear(64, 64), grad_sparsity="topk"), "grad_sparsity"),
    (lambda: SparseLinear24.from_dense(nn.Linear(64, 64), transposable="yes"), "transposable"),
    (lambda: SparseLinear24.from_dense(nn.Linear(64, 64), mask=torch.ones(64, 64, dtype=torch.bool)), "2:4"),
    (lambda: SparseLinear24.from_dense(nn.Linear(64, 64), mask=torch.ones(64, 64)), "torch.bool"),
    (lambda: SparseLinear24.from_dense(nn.Linear(64, 64))(torch.randn(2, 32)), "last dimension 64"),
    (lambda: sparsify_24(nn.Linear(64, 64), filter_fn=3), "filter_fn"),
])
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_constructor_and_state_dict_round_trip():
    mod = SparseLinear24(64, 128, transposable=False)
    assert is_nm(mod.mask, 2, 4)
    sd = mod.state_dict()
    assert set(sd) == {"weight", "bias", "mask"}
    other = SparseLinear24(64, 128, transposable=False)
    other.load_state_dict(sd)
    x = torch.randn(3, 64)
    assert torch.equal(other(x), mod(x))


def test_kernel_swap_24_checks_and_surgery():
    from sparse.pruning.kernel_swap import check_kernel_24, swap_linear_24
    from sparse.pruning.patterns import NMPattern, TransposableNMPattern

    with pytest.raises(ValueError, match="needs a CUDA device"):
        check_kernel_24(TransposableNMPattern(2, 4), "cpu", "pruning[0]")
    with pytest.raises(ValueError, match="runs 2:4 masks"):
        check_kernel_24(NMPattern(1, 4), "cuda", "pruning[0]")
    check_kernel_24(NMPattern(2, 4), "cuda", "pruning[0]")  # accepted (the device itself is not probed)
    model = nn.Sequential(nn.Linear(64, 64))
    w = model[0].weight
    mask = transposable_mask(w.detach(), 2, 4, method="exact")
    new = swap_linear_24(model, "0", mask, True)
    assert model[0] is new and new.weight is w and torch.equal(new.mask, mask)
    with pytest.raises(ValueError, match="plain torch.nn.Linear"):
        swap_linear_24(model, "0", mask, True)


def _recipe_24(pattern=None, refresh=2):
    from sparse import load_recipe

    return load_recipe({"name": "t", "pruning": [{
        "name": "t24", "pattern": pattern or {"type": "nm", "n": 2, "m": 4, "transposable": True},
        "targets": {"include": [r"^0$"]}, "schedule": {"type": "oneshot", "at_step": 1}, "refresh_every": refresh,
        "kernel": "2:4"}]})


def test_recipe_kernel_24_errors():
    from sparse import SparseOptimizer
    from sparse.recipe import RecipeError

    with pytest.raises(RecipeError, match="needs pattern"):
        _recipe_24({"type": "block", "block": [16, 16], "sparsity": 0.5})
    model = nn.Sequential(nn.Linear(64, 64))
    with pytest.raises(ValueError, match="needs a CUDA device"):
        SparseOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), model, _recipe_24())


def test_recipe_kernel_24_swaps_on_first_mask(monkeypatch):
    """The swap logic run on CPU (the CUDA check patched out): SparseLinear24 after the one-shot mask, the same
    Parameter in the optimizer, refreshed masks followed."""
    import sparse.optim as optim_mod
    from sparse import SparseOptimizer

    monkeypatch.setattr(optim_mod, "check_kernel_24", lambda *a, **k: None)
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 8))
    w = model[0].weight
    opt = SparseOptimizer(torch.optim.Adam(model.parameters(), lr=1e-2), model, _recipe_24())
    for step in range(5):
        model(torch.randn(8, 64)).square().mean().backward()
        opt.step()
        opt.zero_grad()
        if step == 0:
            assert isinstance(model[0], SparseLinear24) and model[0].weight is w
            assert opt.param_groups[0]["params"][0] is w
        assert torch.equal(model[0].mask, opt.masks["0.weight"])
    assert is_transposable(model[0].mask, 2, 4)
