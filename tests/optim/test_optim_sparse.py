"""SparseOptimizer on a tiny random BERT: masking, schedules, SR-STE, state dicts, AMP, accumulation."""
import copy

import pytest
import torch

import sparse
from sparse.masks import is_nm, is_transposable
from sparse.optim import SparseOptimizer, format_report
from sparse.pruning import NMPattern
from sparse.recipe import RecipeError

from testkit import batch, loss_of, make_tiny_bert


def recipe(pattern=None, schedule=None, method=None, refresh=0, name="r", **targets):
    entry = {"name": "enc", "pattern": pattern or {"type": "nm", "n": 2, "m": 4},
             "schedule": schedule or {"type": "oneshot", "at_step": 0}, "refresh_every": refresh}
    if method:
        entry["method"] = method
    if targets:
        entry["targets"] = targets
    return {"name": name, "pruning": [entry]}


def train(model, opt, steps, seed=0):
    for i in range(steps):
        x, y = batch(seed + i)
        loss_of(model, x, y).backward()
        opt.step()
        opt.zero_grad()


def weight(model, fqn):
    return model.get_parameter(fqn)


def test_public_names_and_oneshot_masks_applied_at_construction():
    assert sparse.SparseOptimizer is SparseOptimizer
    model = make_tiny_bert()
    opt = SparseOptimizer(torch.optim.AdamW(model.parameters(), lr=1e-3), model, recipe())
    # 2 layers x (q, k, v, attn-out, ffn-in, ffn-out); classifier and pooler skipped by default
    assert len(opt.masks) == 12
    assert not any("classifier" in k or "pooler" in k for k in opt.masks)
    for fqn, mask in opt.masks.items():
        w = weight(model, fqn)
        assert mask.dtype == torch.bool and mask.shape == w.shape
        assert is_nm(mask, 2, 4)
        assert torch.all(w[~mask] == 0)


@pytest.mark.parametrize("opt_cls,kw", [(torch.optim.AdamW, {"lr": 1e-2}),
                                        (torch.optim.SGD, {"lr": 0.1, "momentum": 0.9})])
def test_momentum_never_revives_pruned_weights(opt_cls, kw):
    model = make_tiny_bert()
    # dense for 3 steps so Adam/momentum states are non-zero everywhere, then prune
    opt = SparseOptimizer(opt_cls(model.parameters(), **kw), model,
                          recipe(schedule={"type": "oneshot", "at_step": 3}))
    train(model, opt, 3)
    assert len(opt.masks) == 12
    masks = {k: v.clone() for k, v in opt.masks.items()}
    train(model, opt, 4, seed=10)
    for fqn, mask in masks.items():
        assert torch.equal(opt.masks[fqn], mask)  # magnitude masks of pruned weights are stable
        w = weight(model, fqn)
        assert torch.all(w[~mask] == 0), fqn
        assert torch.count_nonzero(w[mask]) == mask.sum()  # kept weights keep training
    assert all(r["valid"] for r in opt.report())


def test_transposable_and_report():
    model = make_tiny_bert()
    opt = SparseOptimizer(torch.optim.AdamW(model.parameters(), lr=1e-3), model,
                          recipe({"type": "nm", "n": 2, "m": 4, "transposable": True, "solver": "exact"}))
    train(model, opt, 2)
    rows = opt.report()
    assert len(rows) == 12 and all(r["valid"] and r["status"] == "pruned" for r in rows)
    assert all(abs(r["sparsity"] - 0.5) < 1e-6 for r in rows)
    for fqn, mask in opt.masks.items():
        assert is_transposable(mask, 2, 4)
    table = format_report(rows)
    assert "2:4 transposable" in table and "yes" in table


def test_gradual_cubic_schedule_reaches_final_sparsity():
    model = make_tiny_bert()
    opt = SparseOptimizer(torch.optim.SGD(model.parameters(), lr=0.05), model,
                          recipe({"type": "unstructured", "sparsity": 0.8},
                                 {"type": "cubic", "initial_sparsity": 0.0, "start_step": 1, "end_step": 7,
                                  "frequency": 2}))
    assert opt.masks == {}
    seen = []
    for i in range(9):
        train(model, opt, 1, seed=i)
        rows = opt.report()
        seen.append(rows[0]["mask_sparsity"])
    assert seen == sorted(seen)  # monotone
    assert seen[0] == 0.0  # s_i at the start step
    expected_mid = 0.8 + (0.0 - 0.8) * (1 - (3 - 1) / 6) ** 3  # after step 3
    assert abs(seen[2] - expected_mid) < 1e-3
    assert all(abs(r["mask_sparsity"] - 0.8) < 1e-3 and r["valid"] for r in opt.report())


def test_block_pattern():
    model = make_tiny_bert()
    opt = SparseOptimizer(torch.optim.SGD(model.parameters(), lr=0.05), model,
                          recipe({"type": "block", "block": [16, 16], "sparsity": 0.5}))
    train(model, opt, 2)
    assert all(r["valid"] and abs(r["mask_sparsity"] - 0.5) < 1e-6 for r in opt.report())


def test_srste_target_gradient_is_exact():
    # the fused decay: grad += lam * (~mask) * dense, on the dense shadow weight the inner optimizer steps
    from sparse.pruning.optim_state import SRSTETarget
    from sparse.recipe import load_recipe

    entry = load_recipe(recipe(method={"type": "srste", "lambda": 0.5})).pruning[0]
    p = torch.nn.Parameter(torch.tensor([[1.0, 2.0, 3.0, 4.0], [-1.0, -2.0, -3.0, -4.0]]))
    p.grad = torch.ones(2, 4)
    t = SRSTETarget("w", entry, p, NMPattern(2, 4))
    dense = t.mask_source()
    t.set_mask(torch.tensor([[True, False, True, False], [False, False, True, True]]), 0.5)
    t.apply_mask()
    assert p.tolist() == [[1.0, 0.0, 3.0, 0.0], [0.0, 0.0, -3.0, -4.0]]
    t.pre_step()
    assert p.data_ptr() == dense.data_ptr()  # storage swap, no copy
    assert p.grad.tolist() == [[1.0, 2.0, 1.0, 3.0], [0.5, 0.0, 1.0, 1.0]]


def test_srste_dense_gradient_and_decay():
    model = make_tiny_bert()
    lam = 0.5  # large so the decay of pruned weights is visible in a few steps
    opt = SparseOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), model,
                          recipe(method={"type": "srste", "lambda": lam}, refresh=1))
    fqn = "bert.encoder.layer.0.attention.self.query.weight"
    mask0 = opt.masks[fqn].clone()
    dense0 = opt.state_dict()["sparse"]["dense"][fqn].clone()
    x, y = batch(0)
    loss_of(model, x, y).backward()
    g = model.get_parameter(fqn).grad.clone()  # gradient w.r.t. the masked weight (straight-through)
    opt.step()
    dense1 = opt.state_dict()["sparse"]["dense"][fqn]
    expected = dense0 - 0.1 * (g + lam * dense0 * (~mask0))
    torch.testing.assert_close(dense1, expected, rtol=1e-5, atol=1e-6)
    # the model's weight is the masked dense weight; pruned weights moved (SR-STE gradient is dense)
    w = model.get_parameter(fqn)
    assert torch.equal(w, dense1 * opt.masks[fqn])
    assert not torch.equal(dense1[~mask0], dense0[~mask0])
    # masks can change: a pruned weight whose dense value grows past its group's survivors comes back
    mask1 = opt.masks[fqn].clone()
    r, c = (~mask1).nonzero()[0].tolist()
    opt.zero_grad()
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    model.get_parameter(fqn).grad[r, c] = -100.0  # SGD lr 0.1: dense weight += 10
    opt.step()
    assert opt.masks[fqn][r, c] and is_nm(opt.masks[fqn], 2, 4)
    assert model.get_parameter(fqn)[r, c] > 5


def test_refresh_recomputes_from_current_weights():
    model = make_tiny_bert()
    opt = SparseOptimizer(torch.optim.SGD(model.parameters(), lr=0.05), model, recipe(refresh=2))
    fqn = "bert.encoder.layer.1.output.dense.weight"
    # a weight set behind the optimizer's back inside the kept set: refresh must follow the weights
    with torch.no_grad():
        w = model.get_parameter(fqn)
        w.copy_(torch.randn_like(w) * opt.masks[fqn])
    train(model, opt, 2)
    assert torch.equal(opt.masks[fqn], NMPattern(2, 4).mask(model.get_parameter(fqn))) and is_nm(opt.masks[fqn], 2, 4)
    assert opt.step_count == 2


def test_state_dict_round_trip_continues_identically(tmp_path):
    def make():
        m = make_tiny_bert()
        o = SparseOptimizer(torch.optim.AdamW(m.parameters(), lr=1e-3), m,
                            recipe(schedule={"type": "oneshot", "at_step": 2}, method={"type": "srste", "lambda": 1e-3},
                                   refresh=1))
        return m, o

    m1, o1 = make()
    train(m1, o1, 3)
    path = tmp_path / "opt.pt"
    torch.save({"model": m1.state_dict(), "opt": o1.state_dict()}, path)
    ck = torch.load(path, weights_only=True)
    m2, o2 = make()
    m2.load_state_dict(ck["model"])
    o2.load_state_dict(ck["opt"])
    assert o2.step_count == 3
    assert o2.masks.keys() == o1.masks.keys()
    assert all(torch.equal(o1.masks[k], o2.masks[k]) for k in o1.masks)
    train(m1, o1, 2, seed=50)
    train(m2, o2, 2, seed=50)
    for (k, a), b in zip(m1.state_dict().items(), m2.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)


def test_load_state_dict_from_another_recipe_raises():
    m = make_tiny_bert()
    o = SparseOptimizer(torch.optim.SGD(m.parameters(), lr=0.1), m, recipe(name="two-four"))
    sd = o.state_dict()
    m2 = make_tiny_bert()
    o2 = SparseOptimizer(torch.optim.SGD(m2.parameters(), lr=0.1), m2,
                         recipe({"type": "nm", "n": 4, "m": 8}, name="four-eight"))
    with pytest.raises(RecipeError, match="two-four.*four-eight"):
        o2.load_state_dict(sd)
    with pytest.raises(ValueError, match="state_dict"):
        o2.load_state_dict({"foo": 1})


def test_grad_scaler_skipped_step_does_not_advance_schedule():
    model = make_tiny_bert()
    opt = SparseOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), model,
                          recipe(schedule={"type": "oneshot", "at_step": 1}))
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 4)
    x, y = batch(0)
    scaler.scale(loss_of(model, x, y)).backward()
    model.get_parameter("bert.encoder.layer.0.attention.self.query.weight").grad[0, 0] = float("inf")
    before = copy.deepcopy(model.state_dict())
    scaler.step(opt)
    scaler.update()
    opt.zero_grad()
    assert opt.step_count == 0 and opt.masks == {}
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    scaler.scale(loss_of(model, x, y)).backward()
    scaler.step(opt)
    scaler.update()
    assert opt.step_count == 1 and len(opt.masks) == 12


def test_gradient_accumulation_matches_one_big_batch():
    x, y = batch(0, n=8)
    ref = make_tiny_bert()
    o_ref = SparseOptimizer(torch.optim.SGD(ref.parameters(), lr=0.1), ref, recipe())
    loss_of(ref, x, y).backward()
    o_ref.step()
    acc = make_tiny_bert()
    o_acc = SparseOptimizer(torch.optim.SGD(acc.parameters(), lr=0.1), acc, recipe())
    for sl in (slice(0, 4), slice(4, 8)):
        (loss_of(acc, x[sl], y[sl]) / 2).backward()
    o_acc.step()
    assert o_acc.step_count == 1
    for (k, a), b in zip(ref.state_dict().items(), acc.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=k)


def test_param_groups_delegate_to_inner_optimizer():
    model = make_tiny_bert()
    head = [p for n, p in model.named_parameters() if n.startswith("classifier")]
    body = [p for n, p in model.named_parameters() if not n.startswith("classifier")]
    inner = torch.optim.AdamW([{"params": body, "lr": 1e-4}, {"params": head, "lr": 1e-2}])
    opt = SparseOptimizer(inner, model, recipe())
    assert opt.param_groups is inner.param_groups and len(opt.param_groups) == 2
    sched = torch.optim.lr_scheduler.LambdaLR(opt.optimizer, lambda s: 0.5)
    train(model, opt, 1)
    sched.step()
    assert opt.param_groups[1]["lr"] == pytest.approx(0.5e-2)
    assert len(opt.state) > 0


def test_regex_targets_serve_base_and_classification_models():
    r = recipe(include=[r"encoder\.layer\.\d+\.attention\.self"])
    for m in (make_tiny_bert(classifier=False), make_tiny_bert()):
        opt = SparseOptimizer(torch.optim.SGD(m.parameters(), lr=0.1), m, r)
        assert len(opt.masks) == 6  # q, k, v of 2 layers


def test_regex_matching_nothing_lists_near_candidates():
    m = make_tiny_bert()
    with pytest.raises(RecipeError, match=r"matches no.*near candidates:.*attention"):
        SparseOptimizer(torch.optim.SGD(m.parameters(), lr=0.1), m, recipe(include=[r"encoder\.layers\.attn"]))


class Odd(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.good = torch.nn.Linear(8, 8)
        self.odd = torch.nn.Linear(10, 6)  # in_features 10 not divisible by 4


def test_indivisible_layer_error_or_skip():
    m = Odd()
    with pytest.raises(RecipeError, match=r"layer odd .*\(6, 10\).*not divisible by m=4.*on_indivisible"):
        SparseOptimizer(torch.optim.SGD(m.parameters(), lr=0.1), m, recipe())
    opt = SparseOptimizer(torch.optim.SGD(m.parameters(), lr=0.1), m, recipe(on_indivisible="skip"))
    assert list(opt.masks) == ["good.weight"]
    rows = {r["fqn"]: r for r in opt.report()}
    assert rows["odd.weight"]["status"].startswith("skipped: in_features 10")


def test_overlapping_entries_and_bad_arguments_raise():
    m = make_tiny_bert()
    e = {"pattern": {"type": "nm", "n": 2, "m": 4}}
    with pytest.raises(RecipeError, match="already targeted"):
        SparseOptimizer(torch.optim.SGD(m.parameters(), lr=0.1), m,
                        {"name": "x", "pruning": [{**e, "name": "a"}, {**e, "name": "b"}]})
    with pytest.raises(ValueError, match="optimizer: expected a torch.optim.Optimizer"):
        SparseOptimizer([p for p in m.parameters()], m, recipe())
    with pytest.raises(ValueError, match="model: expected a torch.nn.Module"):
        SparseOptimizer(torch.optim.SGD(m.parameters(), lr=0.1), "model", recipe())


def test_closure_is_evaluated():
    m = make_tiny_bert()
    opt = SparseOptimizer(torch.optim.SGD(m.parameters(), lr=0.1), m, recipe())
    x, y = batch(0)

    def closure():
        opt.zero_grad()
        loss = loss_of(m, x, y)
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert loss is not None and opt.step_count == 1


def test_adamw_is_fused_where_every_parameter_allows_it():
    from sparse.optim import adamw

    a, b = torch.nn.Parameter(torch.randn(4, 3)), torch.nn.Parameter(torch.randn(3))
    opt = adamw([{"params": [a], "lr": 1e-3}, {"params": [b], "weight_decay": 0.0}], lr=1e-4)
    assert opt.defaults["fused"] is True and [g["lr"] for g in opt.param_groups] == [1e-3, 1e-4]
    assert adamw([a], fused=False).defaults["fused"] is False  # the caller's choice wins
    # a group holding one tensor or a generator keeps its parameters (the check must not consume them)
    opt = adamw([{"params": a}, {"params": (t for t in [b])}])
    assert [g["params"] for g in opt.param_groups] == [[a], [b]] and opt.defaults["fused"] is True
    # a parameter that fused AdamW cannot step (not floating point): torch's default instead
    c = torch.nn.Parameter(torch.randn(2, dtype=torch.complex64))
    assert not adamw([a, c]).defaults["fused"]
    # same update as the unfused AdamW
    ref = torch.nn.Parameter(a.detach().clone())
    fused, plain = adamw([a], lr=1e-2), torch.optim.AdamW([ref], lr=1e-2)
    for _ in range(3):
        a.grad = torch.ones_like(a)
        ref.grad = torch.ones_like(ref)
        fused.step(), plain.step()
    torch.testing.assert_close(a, ref)
