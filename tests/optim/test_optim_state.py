"""Inner-optimizer state of pruned entries: exact zeros / normal fills, kept entries untouched."""
import copy

import pytest
import torch

import sparse.optim as sparse_optim
from sparse.optim import SparseOptimizer
from sparse.pruning.optim_state import STATE_FILL, state_fill_for, tidy_state

from testkit import batch, loss_of, make_tiny_bert


def _recipe(at_step):
    return {"name": "r", "pruning": [{"name": "enc", "pattern": {"type": "nm", "n": 2, "m": 4},
                                      "schedule": {"type": "oneshot", "at_step": at_step}}]}


def _train(model, opt, steps, seed=0):
    for i in range(steps):
        x, y = batch(seed + i)
        loss_of(model, x, y).backward()
        opt.step()
        opt.zero_grad()


@pytest.mark.parametrize("opt_cls,kw", [(torch.optim.AdamW, {"lr": 1e-2}),
                                        (torch.optim.Adam, {"lr": 1e-2, "amsgrad": True}),
                                        (torch.optim.SGD, {"lr": 0.1, "momentum": 0.9})])
@pytest.mark.parametrize("at_step", [0, 3])
def test_weights_identical_to_untidied_run_and_pruned_state_is_exact(monkeypatch, opt_cls, kw, at_step):
    model = make_tiny_bert()
    ref_model = copy.deepcopy(model)
    opt = SparseOptimizer(opt_cls(model.parameters(), **kw), model, _recipe(at_step))
    with monkeypatch.context() as mp:
        mp.setattr(sparse_optim, "state_fill_for", lambda o: None)
        ref = SparseOptimizer(opt_cls(ref_model.parameters(), **kw), ref_model, _recipe(at_step))
    _train(model, opt, 8)
    _train(ref_model, ref, 8)
    # the tidied state changes nothing a user sees: every weight is bit-identical
    for (n, p), (_, q) in zip(model.named_parameters(), ref_model.named_parameters()):
        assert torch.equal(p, q), n
    fill = STATE_FILL[opt_cls.__name__]
    for fqn, mask in opt.masks.items():
        p = model.get_parameter(fqn)
        st, ref_st = opt.optimizer.state[p], ref.optimizer.state[ref_model.get_parameter(fqn)]
        for key, value in fill.items():
            if key not in st:
                continue
            pruned = st[key][~mask]
            if value == 0:
                assert torch.all(pruned == 0), (fqn, key)
            else:  # the fill decays by beta2 per step: still a normal float near the fill
                assert torch.all((pruned > 0.9 * value) & (pruned <= value)), (fqn, key)
            assert torch.equal(st[key][mask], ref_st[key][mask]), (fqn, key)


def test_untidied_state_decays_toward_denormals_and_tidied_does_not():
    """Why the module exists: masked gradients make Adam's exp_avg decay geometrically."""
    model = make_tiny_bert()
    ref_model = copy.deepcopy(model)
    opt = SparseOptimizer(torch.optim.AdamW(model.parameters(), lr=1e-3), model, _recipe(2))
    _train(model, opt, 3)
    fqn = next(iter(opt.masks))
    p, mask = model.get_parameter(fqn), opt.masks[fqn]
    assert torch.all(opt.optimizer.state[p]["exp_avg"][~mask] == 0)
    assert torch.all(opt.optimizer.state[p]["exp_avg_sq"][~mask] > 0.99)
    # a plain optimizer with the gradient masked by hand keeps a decaying, non-zero exp_avg
    ref_opt = torch.optim.AdamW(ref_model.parameters(), lr=1e-3)
    _train(ref_model, ref_opt, 2)
    q = ref_model.get_parameter(fqn)
    for i in range(3):
        x, y = batch(50 + i)
        loss_of(ref_model, x, y).backward()
        q.grad.mul_(mask)
        ref_opt.step()
        ref_opt.zero_grad()
    assert torch.count_nonzero(ref_opt.state[q]["exp_avg"][~mask]) > 0


def test_tidy_state_revived_entries_start_fresh_and_missing_state_is_reported():
    mask = torch.tensor([[True, False, True, False]])
    revived = torch.tensor([[True, False, False, False]])
    st = {"exp_avg": torch.full((1, 4), 0.5), "exp_avg_sq": torch.full((1, 4), 0.25), "step": torch.tensor(3.0)}
    assert tidy_state(st, STATE_FILL["AdamW"], mask, revived)
    assert st["exp_avg"].tolist() == [[0.0, 0.0, 0.5, 0.0]]
    assert st["exp_avg_sq"].tolist() == [[0.0, 1.0, 0.25, 1.0]]
    assert st["step"].item() == 3.0
    assert not tidy_state({}, STATE_FILL["AdamW"], mask)


def test_only_listed_torch_optimizers_are_tidied():
    class MyAdamW(torch.optim.AdamW):
        pass

    p = [torch.nn.Parameter(torch.zeros(2))]
    assert state_fill_for(torch.optim.AdamW(p)) is STATE_FILL["AdamW"]
    assert state_fill_for(MyAdamW(p)) is None
    assert state_fill_for(torch.optim.RMSprop(p)) is None


def test_srste_state_is_left_dense():
    model = make_tiny_bert()
    rec = _recipe(0)
    rec["pruning"][0]["method"] = {"type": "srste", "lambda": 2e-4}
    opt = SparseOptimizer(torch.optim.AdamW(model.parameters(), lr=1e-3), model, rec)
    _train(model, opt, 2)
    fqn = next(iter(opt.masks))
    st = opt.optimizer.state[model.get_parameter(fqn)]
    assert torch.all(st["exp_avg_sq"][~opt.masks[fqn]] < 0.5)  # real gradient moments, not the fill
