"""``kernel: block-sparse``: once the mask is final SparseOptimizer swaps the Linears for BlockSparseLinear in
place (optimizer state carried), training goes on as the masked dense run of the same seed would, and the
model saves as a dense-shaped folder or as the sparse modules."""
import copy
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import sparse.ops
from sparse.nn import BlockSparseLinear
from sparse.ops import dispatch
from sparse.optim import SparseOptimizer, format_report
from sparse.pruning.kernel_swap import (dense_state_dict, load_block_sparse,
                                        save_block_sparse)
from sparse.recipe import RecipeError
from testkit import batch, loss_of, make_tiny_bert

ENC = r"encoder\.layer"


def recipe(kernel: bool, block: int = 16, sparsity: float = 0.5, schedule=None, method="magnitude"):
    e = {"name": "blocks", "pattern": {"type": "block", "block": [block, block], "sparsity": sparsity},
         "targets": {"include": [ENC]}, "schedule": schedule or {"type": "oneshot", "at_step": 2},
         "method": {"type": method}}
    if kernel:
        e["kernel"] = "block-sparse"
    return {"name": "t", "pruning": [e]}


def train(model, opt, steps, start=0, bf16=False):
    losses = []
    for s in range(start, start + steps):
        x, y = batch(s)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = loss_of(model, x, y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses


def build(kernel, opt_cls=torch.optim.AdamW, **kw):
    model = make_tiny_bert()
    lr = {"lr": 1e-3} if opt_cls is not torch.optim.SGD else {"lr": 1e-2, "momentum": 0.9}
    return model, SparseOptimizer(opt_cls(model.parameters(), **lr), model, recipe(kernel, **kw))


def weights(model):
    """Dense-shaped weights of every module (block-sparse ones expanded)."""
    return {k: v.float() for k, v in dense_state_dict(model).items()}


def linears(model):
    return [m for n, m in model.named_modules() if "encoder.layer" in n and isinstance(m, (torch.nn.Linear,
                                                                                         BlockSparseLinear))]


@pytest.mark.parametrize("block,sparsity", [(16, 0.5), (32, 0.75)])
def test_swap_matches_masked_dense_fp32(block, sparsity):
    dense_model, dense_opt = build(False, block=block, sparsity=sparsity)
    model, opt = build(True, block=block, sparsity=sparsity)
    dispatch._last.pop("block_sparse.linear", None)
    l_dense = train(dense_model, dense_opt, 6)
    l_kern = train(model, opt, 6)
    assert sparse.ops.last_backend("block_sparse.linear") in sparse.ops.BACKENDS  # the kernel ran
    torch.testing.assert_close(torch.tensor(l_kern), torch.tensor(l_dense), rtol=1e-5, atol=1e-6)
    # every targeted Linear is a BlockSparseLinear now (bias Parameters reused), heads stay nn.Linear
    mods = linears(model)
    assert len(mods) == 12 and all(isinstance(m, BlockSparseLinear) for m in mods)
    assert type(model.classifier) is torch.nn.Linear
    assert all(m.block == block for m in mods)
    w_dense, w_kern = weights(dense_model), weights(model)
    assert w_dense.keys() == w_kern.keys()
    for k in w_dense:
        torch.testing.assert_close(w_kern[k], w_dense[k], rtol=1e-5, atol=1e-6)
    # masks reported as before, the same in both runs
    assert opt.masks.keys() == dense_opt.masks.keys() and len(opt.masks) == 12
    assert all(torch.equal(opt.masks[k], dense_opt.masks[k]) for k in opt.masks)
    # optimizer state: the block data is stepped, its moments are the dense moments' kept blocks
    in_groups = {id(p) for g in opt.param_groups for p in g["params"]}
    for (name, p), m in zip([(n, p) for n, p in model.named_parameters() if n.endswith("weight_data")], mods):
        assert id(p) in in_groups
        dense_w = dense_model.get_parameter(name.replace("weight_data", "weight"))
        for key in ("exp_avg", "exp_avg_sq"):
            got, ref = opt.state[p][key], dense_opt.state[dense_w][key]
            torch.testing.assert_close(got, m.layout().from_dense(ref), rtol=1e-5, atol=1e-9)
        assert float(opt.state[p]["step"]) == float(dense_opt.state[dense_w]["step"]) == 6
    rows = opt.report()
    assert all(r["kernel"] == "block-sparse" and r["backend"] in sparse.ops.BACKENDS and r["valid"] for r in rows)
    assert abs(rows[0]["sparsity"] - sparsity) < 1e-6 and rows[0]["shape"] == [64, 64]
    assert "block-sparse (" in format_report(rows)
    assert opt.kernel_step == 2 and dense_opt.kernel_step is None


def test_swap_happens_after_the_final_step_only():
    model, opt = build(True)
    train(model, opt, 1)
    assert all(type(m) is torch.nn.Linear for m in linears(model)) and not opt.masks
    train(model, opt, 1, start=1)  # step 2: the one-shot mask is final, the swap follows the step
    assert all(isinstance(m, BlockSparseLinear) for m in linears(model))


def test_swap_at_construction_with_oneshot_at_step_0():
    model, opt = build(True, schedule={"type": "oneshot", "at_step": 0})
    assert all(isinstance(m, BlockSparseLinear) for m in linears(model))
    assert not opt.state  # nothing to carry yet
    train(model, opt, 2)


def test_cubic_schedule_swaps_at_its_end():
    sched = {"type": "cubic", "initial_sparsity": 0.0, "start_step": 1, "end_step": 4, "frequency": 1}
    dense_model, dense_opt = build(False, sparsity=0.75, schedule=sched)
    model, opt = build(True, sparsity=0.75, schedule=sched)
    l_dense = train(dense_model, dense_opt, 3)
    l_kern = train(model, opt, 3)
    assert all(type(m) is torch.nn.Linear for m in linears(model))  # still gradual
    l_dense += train(dense_model, dense_opt, 4, start=3)
    l_kern += train(model, opt, 4, start=3)
    assert all(isinstance(m, BlockSparseLinear) for m in linears(model))
    torch.testing.assert_close(torch.tensor(l_kern), torch.tensor(l_dense), rtol=1e-5, atol=1e-6)
    assert all(abs(r["mask_sparsity"] - 0.75) < 1e-6 for r in opt.report())


def test_bf16_autocast_within_bf16_tolerance():
    dense_model, dense_opt = build(False, block=32, sparsity=0.5)
    model, opt = build(True, block=32, sparsity=0.5)
    l_dense = train(dense_model, dense_opt, 6, bf16=True)
    l_kern = train(model, opt, 6, bf16=True)
    torch.testing.assert_close(torch.tensor(l_kern), torch.tensor(l_dense), rtol=2e-2, atol=2e-3)
    assert all(p.dtype == torch.float32 for p in model.parameters())  # fp32 master weights
    w_dense, w_kern = weights(dense_model), weights(model)
    for k in w_dense:
        torch.testing.assert_close(w_kern[k], w_dense[k], rtol=2e-2, atol=2e-3)


def test_sgd_momentum_carried():
    dense_model, dense_opt = build(False, opt_cls=torch.optim.SGD)
    model, opt = build(True, opt_cls=torch.optim.SGD)
    torch.testing.assert_close(torch.tensor(train(model, opt, 5)), torch.tensor(train(dense_model, dense_opt, 5)),
                               rtol=1e-5, atol=1e-6)
    m = linears(model)[0]
    ref = dense_opt.state[linears(dense_model)[0].weight]["momentum_buffer"]
    torch.testing.assert_close(opt.state[m.weight_data]["momentum_buffer"], m.layout().from_dense(ref))


def test_srste_entry_swaps_too():
    dense_model, dense_opt = build(False, method="srste")
    model, opt = build(True, method="srste")
    torch.testing.assert_close(torch.tensor(train(model, opt, 5)), torch.tensor(train(dense_model, dense_opt, 5)),
                               rtol=1e-5, atol=1e-6)
    assert all(isinstance(m, BlockSparseLinear) for m in linears(model))
    assert not opt.state_dict()["sparse"]["dense"]  # no shadow weights on the kernel


@pytest.mark.parametrize("weights_first", [False, True])
def test_state_dict_round_trip_after_swap(weights_first):
    model, opt = build(True)
    train(model, opt, 4)
    # deep copies: torch's optimizer state_dict() holds the live moments
    sd_opt, sd_model = copy.deepcopy(opt.state_dict()), {k: v.clone() for k, v in model.state_dict().items()}
    dense_sd = {k: v.clone() for k, v in dense_state_dict(model).items()}
    cont = train(model, opt, 3, start=4)

    fresh, fresh_opt = build(True)  # a resumed run: dense model, optimizer at step 0
    if weights_first:  # a saved run folder: dense-shaped weights, then the optimizer (it swaps)
        fresh.load_state_dict(dense_sd)
        fresh_opt.load_state_dict(sd_opt)
    else:  # the swapped model's own state dict, after the optimizer swapped the modules
        fresh_opt.load_state_dict(sd_opt)
        fresh.load_state_dict(sd_model)
    assert all(isinstance(m, BlockSparseLinear) for m in linears(fresh)) and fresh_opt.step_count == 4
    assert fresh_opt.state_dict()["sparse"]["masks"].keys() == sd_opt["sparse"]["masks"].keys()
    assert train(fresh, fresh_opt, 3, start=4) == cont
    for k, v in weights(model).items():
        assert torch.equal(weights(fresh)[k], v), k


def test_state_dict_refusals_after_swap():
    model, opt = build(True)
    early = opt.state_dict()  # step 0: before the swap
    train(model, opt, 3)
    late = opt.state_dict()
    with pytest.raises(ValueError, match="from before its swap"):
        opt.load_state_dict(early)
    bad = {**late, "sparse": {**late["sparse"], "masks": dict(late["sparse"]["masks"])}}
    k = next(iter(bad["sparse"]["masks"]))
    bad["sparse"]["masks"][k] = bad["sparse"]["masks"][k].flip(0)
    with pytest.raises(ValueError, match="another final mask"):
        opt.load_state_dict(bad)
    opt.load_state_dict(late)  # the same final masks: fine
    # a state of the wrong layout for a weight that swaps at load
    fresh, fresh_opt = build(True)
    osd = late["optimizer"]
    target = linears(model)[0].weight_data
    key = next(i for i, p in enumerate(opt.param_groups[0]["params"]) if p is target)  # ids are positions
    wrong = {**osd, "state": {**osd["state"], key: {**osd["state"][key], "exp_avg": torch.zeros(64, 64)}}}
    with pytest.raises(ValueError, match=r"expected shape \(8, 16, 16\)"):
        fresh_opt.load_state_dict({**late, "optimizer": wrong})
    assert all(type(m) is torch.nn.Linear for m in linears(fresh))  # nothing changed


def test_recipe_refusals():
    for bad, msg in [({"type": "nm", "n": 2, "m": 4}, "needs a block pattern.*2:4"),
                     ({"type": "block", "block": [16, 32], "sparsity": 0.5}, "square blocks"),
                     ({"type": "unstructured", "sparsity": 0.5}, "allowed values: none, block-sparse")]:
        with pytest.raises(RecipeError, match=f"kernel.*{msg}"):
            SparseOptimizer(torch.optim.AdamW(make_tiny_bert().parameters()), make_tiny_bert(),
                            {"name": "t", "pruning": [{"pattern": bad, "kernel": "block-sparse"}]})
    r = recipe(True)
    r["pruning"][0]["refresh_every"] = 4
    with pytest.raises(RecipeError, match="refresh_every"):
        SparseOptimizer(torch.optim.AdamW(make_tiny_bert().parameters()), make_tiny_bert(), r)


def test_optimizer_and_module_refusals():
    class Factored(torch.optim.Optimizer):
        def __init__(self, params):
            super().__init__(params, {"lr": 1e-3})

        def step(self, closure=None):
            pass

    model = make_tiny_bert()
    with pytest.raises(ValueError, match="elementwise torch optimizer"):
        SparseOptimizer(Factored(model.parameters()), model, recipe(True))
    mha = torch.nn.Module()
    mha.attn = torch.nn.MultiheadAttention(64, 4)
    r = recipe(True)
    r["pruning"][0]["targets"] = {"include": ["out_proj"], "exclude": []}
    with pytest.raises(ValueError, match="plain torch.nn.Linear"):
        SparseOptimizer(torch.optim.AdamW(mha.parameters()), mha, r)


DDP_SCRIPT = textwrap.dedent(r'''
    import os, sys
    import torch
    import torch.distributed as dist
    sys.path.insert(0, sys.argv[1])
    from testkit import make_tiny_bert
    from sparse.optim import SparseOptimizer
    dist.init_process_group("gloo", init_method="file://" + sys.argv[2], rank=0, world_size=1)
    model = torch.nn.parallel.DistributedDataParallel(make_tiny_bert())
    recipe = {"name": "ddp", "pruning": [{"pattern": {"type": "block", "block": [16, 16], "sparsity": 0.5},
              "targets": {"include": [r"encoder\.layer"]}, "kernel": "block-sparse"}]}
    try:
        SparseOptimizer(torch.optim.AdamW(model.parameters()), model, recipe)
        print("ACCEPTED")
    except ValueError as exc:
        print("REFUSED", exc)
    dist.destroy_process_group()
    os._exit(0)
''')


def test_ddp_model_refused(tmp_path):
    """DDP's reducer keeps the original parameters, so swapped modules would train without gradient
    averaging: a DDP-wrapped model with a kernel entry is refused at construction, before any swap."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    out = subprocess.run([sys.executable, str(script), here, str(tmp_path / "store")], capture_output=True,
                         text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert "REFUSED" in out.stdout and "DistributedDataParallel" in out.stdout, out.stdout + out.stderr


# ------------------------------------------------------------------------------------------- saving
def test_dense_state_dict_loads_as_plain_model():
    model, opt = build(True)
    train(model, opt, 3)
    plain = make_tiny_bert(seed=1)
    plain.load_state_dict(dense_state_dict(model))  # strict: same keys as the dense model
    model.eval(), plain.eval()
    x, _ = batch(9)
    torch.testing.assert_close(plain(input_ids=x).logits, model(input_ids=x).logits, rtol=1e-5, atol=1e-6)
    for k, m in opt.masks.items():
        assert not bool(plain.get_parameter(k).detach()[~m].any())  # zeros in pruned blocks


def test_save_and_load_block_sparse_modules(tmp_path):
    model, opt = build(True)
    train(model, opt, 3)
    save_block_sparse(model, str(tmp_path))
    doc = json.loads((tmp_path / "sparse_modules.json").read_text())
    assert len(doc["modules"]) == 12
    rec = doc["modules"]["bert.encoder.layer.0.attention.self.query"]
    assert rec["block"] == 16 and rec["blocks_kept"] == 8 and rec["class"] == "BlockSparseLinear"
    plain = make_tiny_bert(seed=1)
    plain.load_state_dict(dense_state_dict(model))
    load_block_sparse(plain, str(tmp_path))
    assert all(isinstance(m, BlockSparseLinear) for m in linears(plain))
    for (n, a), (_, b) in zip(model.named_parameters(), plain.named_parameters()):
        assert torch.equal(a, b), n
    model.eval(), plain.eval()
    x, _ = batch(9)
    assert torch.equal(plain(input_ids=x).logits, model(input_ids=x).logits)
    # a dense model that does not match the saved masks is refused before anything changes
    other = make_tiny_bert(seed=1)
    with pytest.raises(ValueError, match="non-zeros outside the saved block mask"):
        load_block_sparse(other, str(tmp_path))
    assert all(type(m) is torch.nn.Linear for m in linears(other))
    (tmp_path / "sparse_modules.json").write_text(json.dumps({**doc, "version": 99}))
    with pytest.raises(ValueError, match="expected format"):
        load_block_sparse(make_tiny_bert(), str(tmp_path))


def test_fingerprint_names_the_kernel_only_when_set():
    from sparse.recipe import load_recipe

    plain, none, kern = (load_recipe(recipe(False)), load_recipe({**recipe(False), "pruning": [
        {**recipe(False)["pruning"][0], "kernel": "none"}]}), load_recipe(recipe(True)))
    # recipes written before the key keep their fingerprint (saved optimizer states still load)
    assert plain.pruning_fingerprint() == none.pruning_fingerprint() != kern.pruning_fingerprint()
