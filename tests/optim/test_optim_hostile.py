"""Hostile inputs to ``SparseOptimizer``: wrong arguments at construction, odd dtypes and devices, and
edited or mismatched checkpoints. ``load_state_dict`` validates everything before it changes anything:
a refused load leaves the inner optimizer, the masks, the schedule clock and the model as they were."""
import copy
import math

import pytest
import torch
import torch.nn as nn

from sparse.masks import is_nm, is_transposable
from sparse.optim import SparseOptimizer
from sparse.pruning import NMPattern
from sparse.recipe import RecipeError

from testkit import batch, loss_of, make_tiny_bert

Q = "bert.encoder.layer.0.attention.self.query.weight"
NM = {"type": "nm", "n": 2, "m": 4}
NMT = {"type": "nm", "n": 2, "m": 4, "transposable": True, "solver": "exact"}


def recipe(pattern=None, method="magnitude", at_step=0, **targets):
    e = {"name": "enc", "pattern": pattern or NM, "method": method, "schedule": {"type": "oneshot", "at_step": at_step}}
    if targets:
        e["targets"] = targets
    return {"name": "r", "pruning": [e]}


RECIPES = {"magnitude": recipe(), "srste": recipe(NMT, method="srste"), "late": recipe(at_step=3)}


def train(model, opt, steps, seed=0):
    for i in range(steps):
        x, y = batch(seed + i)
        loss_of(model, x, y).backward()
        opt.step()
        opt.zero_grad()


def make(kind="magnitude", seed=0, steps=1):
    model = make_tiny_bert(seed)
    opt = SparseOptimizer(torch.optim.AdamW(model.parameters(), lr=1e-2), model, RECIPES[kind])
    train(model, opt, steps, seed=10 * seed)
    return model, opt


def same(a, b) -> bool:
    """Deep equality of nested state (tensors exactly, NaN == NaN)."""
    if isinstance(a, torch.Tensor):
        return (isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape
                and torch.equal(torch.nan_to_num(a.float()), torch.nan_to_num(b.float())))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b or (isinstance(a, float) and math.isnan(a) and math.isnan(b))


def snapshot(model, opt):
    return (copy.deepcopy(opt.state_dict()), copy.deepcopy(model.state_dict()),
            {k: v.clone() for k, v in opt.masks.items()}, opt.step_count)


def param_id(sd, fqn, model):
    """The inner optimizer state key of parameter ``fqn`` in a saved state dict."""
    names = [n for n, _ in model.named_parameters()]
    return sd["optimizer"]["param_groups"][0]["params"][names.index(fqn)]


def sp(sd):
    return sd["sparse"]


def _set(d, key, value):
    d[key] = value


def _del(d, key):
    del d[key]


# (id, recipe kind, edit(sd, model) -> None or a replacement, exception, message)
BAD_LOADS = [
    ("not-a-dict", "magnitude", lambda sd, m: [sd], ValueError, r"state_dict: expected a SparseOptimizer\.state_dict\(\)"),
    ("no-sparse", "magnitude", lambda sd, m: _del(sd, "sparse"), ValueError, r"state_dict: expected .* keys 'optimizer' and 'sparse'"),
    ("sparse-list", "magnitude", lambda sd, m: _set(sd, "sparse", [1]), ValueError, r"state_dict\['sparse'\]: expected a dict, got list"),
    ("no-masks", "magnitude", lambda sd, m: _del(sp(sd), "masks"), ValueError, r"state_dict\['sparse'\]: missing key 'masks'"),
    ("no-step", "magnitude", lambda sd, m: _del(sp(sd), "step"), ValueError, r"state_dict\['sparse'\]: missing key 'step'"),
    ("no-sparsity", "magnitude", lambda sd, m: _del(sp(sd), "sparsity"), ValueError, r"state_dict\['sparse'\]: missing key 'sparsity'"),
    ("no-dense", "srste", lambda sd, m: _del(sp(sd), "dense"), ValueError, r"state_dict\['sparse'\]: missing key 'dense'"),
    ("extra-key", "magnitude", lambda sd, m: _set(sp(sd), "extra", 1), ValueError, r"state_dict\['sparse'\]: unknown key 'extra'"),
    ("version-2", "magnitude", lambda sd, m: _set(sp(sd), "version", 2), ValueError, r"\['version'\]: expected 1, got 2"),
    ("version-str", "magnitude", lambda sd, m: _set(sp(sd), "version", "1"), ValueError, r"\['version'\]: expected 1, got '1'"),
    ("version-bool", "magnitude", lambda sd, m: _set(sp(sd), "version", True), ValueError, r"\['version'\]: expected 1, got True"),
    ("step-negative", "magnitude", lambda sd, m: _set(sp(sd), "step", -1), ValueError, r"\['step'\]: expected an integer >= 0, got -1"),
    ("step-str", "magnitude", lambda sd, m: _set(sp(sd), "step", "3"), ValueError, r"\['step'\]: expected an integer >= 0, got '3'"),
    ("step-float", "magnitude", lambda sd, m: _set(sp(sd), "step", 1.5), ValueError, r"\['step'\]: expected an integer >= 0, got 1\.5"),
    ("step-bool", "magnitude", lambda sd, m: _set(sp(sd), "step", True), ValueError, r"\['step'\]: expected an integer >= 0, got True"),
    ("masks-list", "magnitude", lambda sd, m: _set(sp(sd), "masks", []), ValueError, r"\['masks'\]: expected a dict fqn -> tensor, got list"),
    ("unknown-fqn", "magnitude", lambda sd, m: _set(sp(sd)["masks"], "bert.nope.weight", sp(sd)["masks"][Q]),
     ValueError, r"\['masks'\]: layers not targeted by this optimizer: \['bert\.nope\.weight'\]"),
    ("missing-fqn", "magnitude", lambda sd, m: _del(sp(sd)["masks"], Q), ValueError,
     rf"\['masks'\]: missing {Q}: entry 'enc' prunes from step 0 and the state is at step 1"),
    ("mask-early", "late", lambda sd, m: _set(sp(sd)["masks"], Q, NMPattern(2, 4).mask(m.get_parameter(Q))), ValueError,
     rf"\['masks'\]\['{Q}'\]: entry 'enc' prunes from step 3 but the state is at step 1, when it has no mask"),
    ("mask-shape", "magnitude", lambda sd, m: _set(sp(sd)["masks"], Q, sp(sd)["masks"][Q][:, :8].clone()), ValueError,
     rf"\['masks'\]\['{Q}'\]: expected a torch\.bool tensor of shape \(64, 64\), got torch\.bool \(64, 8\)"),
    ("mask-uint8", "magnitude", lambda sd, m: _set(sp(sd)["masks"], Q, sp(sd)["masks"][Q].to(torch.uint8)), ValueError,
     rf"\['masks'\]\['{Q}'\]: expected a torch\.bool tensor of shape \(64, 64\), got torch\.uint8 \(64, 64\)"),
    ("mask-list", "magnitude", lambda sd, m: _set(sp(sd)["masks"], Q, sp(sd)["masks"][Q].tolist()), ValueError,
     rf"\['masks'\]\['{Q}'\]: expected a torch\.bool tensor of shape \(64, 64\), got list"),
    ("mask-meta", "magnitude", lambda sd, m: _set(sp(sd)["masks"], Q, torch.empty(64, 64, dtype=torch.bool, device="meta")),
     ValueError, rf"\['masks'\]\['{Q}'\]: a meta tensor has no values"),
    ("mask-not-nm", "magnitude", lambda sd, m: _set(sp(sd)["masks"], Q, torch.ones(64, 64, dtype=torch.bool)), ValueError,
     rf"\['masks'\]\['{Q}'\]: not a valid 2:4 mask"),
    ("mask-not-transposable", "srste",
     lambda sd, m: _set(sp(sd)["masks"], Q, NMPattern(2, 4).mask(torch.randn(64, 64, generator=torch.Generator().manual_seed(0)))),
     ValueError, rf"\['masks'\]\['{Q}'\]: not a valid 2:4 transposable mask"),
    ("sparsity-missing", "magnitude", lambda sd, m: _del(sp(sd)["sparsity"], Q), ValueError,
     rf"\['sparsity'\]: expected the same layers as \['masks'\]; missing \['{Q}'\]"),
    ("sparsity-extra", "magnitude", lambda sd, m: _set(sp(sd)["sparsity"], "x.weight", 0.5), ValueError,
     r"\['sparsity'\]: expected the same layers as \['masks'\]; extra \['x\.weight'\]"),
    ("sparsity-range", "magnitude", lambda sd, m: _set(sp(sd)["sparsity"], Q, 1.5), ValueError,
     rf"\['sparsity'\]\['{Q}'\]: expected a number in \[0, 1\], got 1\.5"),
    ("sparsity-nan", "magnitude", lambda sd, m: _set(sp(sd)["sparsity"], Q, float("nan")), ValueError,
     rf"\['sparsity'\]\['{Q}'\]: expected a number in \[0, 1\], got nan"),
    ("sparsity-str", "magnitude", lambda sd, m: _set(sp(sd)["sparsity"], Q, "0.5"), ValueError,
     rf"\['sparsity'\]\['{Q}'\]: expected a number in \[0, 1\], got '0\.5'"),
    ("dense-list", "srste", lambda sd, m: _set(sp(sd), "dense", []), ValueError, r"\['dense'\]: expected a dict fqn -> tensor, got list"),
    ("dense-shape", "srste", lambda sd, m: _set(sp(sd)["dense"], Q, torch.zeros(64, 60)), ValueError,
     rf"\['dense'\]\['{Q}'\]: expected a torch\.float32 tensor of shape \(64, 64\), got torch\.float32 \(64, 60\)"),
    ("dense-dtype", "srste", lambda sd, m: _set(sp(sd)["dense"], Q, sp(sd)["dense"][Q].double()), ValueError,
     rf"\['dense'\]\['{Q}'\]: expected a torch\.float32 tensor of shape \(64, 64\), got torch\.float64 \(64, 64\)"),
    ("dense-nan", "srste", lambda sd, m: sp(sd)["dense"][Q].__setitem__((0, 0), float("nan")), ValueError,
     rf"\['dense'\]\['{Q}'\]: expected finite values, got 1 NaN/Inf"),
    ("dense-meta", "srste", lambda sd, m: _set(sp(sd)["dense"], Q, torch.empty(64, 64, device="meta")), ValueError,
     rf"\['dense'\]\['{Q}'\]: a meta tensor has no values"),
    ("dense-missing-fqn", "srste", lambda sd, m: _del(sp(sd)["dense"], Q), ValueError,
     rf"\['dense'\]\['{Q}'\]: expected the dense weight of the masked SR-STE target, got none"),
    ("dense-for-magnitude", "magnitude", lambda sd, m: _set(sp(sd), "dense", {Q: torch.zeros(64, 64)}), ValueError,
     rf"\['dense'\]\['{Q}'\]: only masked SR-STE targets have a dense weight"),
    ("optimizer-list", "magnitude", lambda sd, m: _set(sd, "optimizer", []), ValueError,
     r"state_dict\['optimizer'\]: expected the wrapped optimizer's state_dict\(\) \(a dict with 'state' and "
     r"'param_groups'\), got list"),
    ("optimizer-no-groups", "magnitude", lambda sd, m: _del(sd["optimizer"], "param_groups"), ValueError,
     r"state_dict\['optimizer'\]: expected the wrapped optimizer's state_dict\(\)"),
    ("optimizer-group-count", "magnitude", lambda sd, m: sd["optimizer"]["param_groups"].append({"params": []}),
     ValueError, r"state_dict\['optimizer'\]\['param_groups'\]: expected 1 parameter groups, got 2"),
    ("optimizer-group-size", "magnitude", lambda sd, m: [sd["optimizer"]["param_groups"][0]["params"].pop()] and None, ValueError,
     r"state_dict\['optimizer'\]\['param_groups'\]\[0\]: expected \d+ parameters, got \d+"),
    ("optimizer-moment-shape", "magnitude",
     lambda sd, m: _set(sd["optimizer"]["state"][param_id(sd, Q, m)], "exp_avg", torch.zeros(3)), ValueError,
     rf"state_dict\['optimizer'\]\['state'\]: exp_avg of {Q}: expected shape \(64, 64\), got \(3,\)"),
    ("optimizer-state-list", "magnitude", lambda sd, m: _set(sd["optimizer"], "state", []), ValueError,
     r"state_dict\['optimizer'\]\['state'\]: expected a dict, got list"),
]


@pytest.mark.parametrize("case", BAD_LOADS, ids=[c[0] for c in BAD_LOADS])
def test_refused_load_changes_nothing(case):
    _, kind, edit, exc, match = case
    src_model, src = make(kind, seed=1, steps=1)
    sd = copy.deepcopy(src.state_dict())
    replaced = edit(sd, src_model)
    if replaced is not None:
        sd = replaced
    model, opt = make(kind, seed=0, steps=2)
    before = snapshot(model, opt)
    with pytest.raises(exc, match=match):
        opt.load_state_dict(sd)
    after = snapshot(model, opt)
    assert same(before[0], after[0]), "inner optimizer or sparse state changed by a refused load"
    assert same(before[1], after[1]) and same(before[2], after[2]) and before[3] == after[3]


def test_recipe_mismatch_is_refused_and_changes_nothing():
    _, src = make("magnitude", seed=1)
    model, opt = make("srste")
    before = snapshot(model, opt)
    with pytest.raises(RecipeError, match="saved under recipe 'r' .* load it with the recipe it was saved under"):
        opt.load_state_dict(src.state_dict())
    assert same(before[0], snapshot(model, opt)[0])


@pytest.mark.parametrize("kind", sorted(RECIPES))
def test_valid_loads_still_work(kind):
    """The checks refuse only what is wrong: a genuine state dict (also via torch.save) loads."""
    _, src = make(kind, seed=1, steps=2)
    model, opt = make(kind, seed=0, steps=1)
    opt.load_state_dict(copy.deepcopy(src.state_dict()))
    assert opt.step_count == 2 and opt.masks.keys() == src.masks.keys()
    assert all(torch.equal(opt.masks[k], src.masks[k]) for k in src.masks)


# --------------------------------------------------------------------------------------- construction
class NoLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = nn.LayerNorm(8)
        self.act = nn.ReLU()


class HeadOnly(nn.Module):
    def __init__(self):
        super().__init__()
        self.classifier = nn.Linear(8, 4)


def _sgd(m):
    return torch.optim.SGD(m.parameters(), lr=0.1)


BAD_CONSTRUCTION = [
    ("optimizer-list", lambda m: (list(m.parameters()), m, recipe()), ValueError,
     r"optimizer: expected a torch\.optim\.Optimizer, got list"),
    ("optimizer-none", lambda m: (None, m, recipe()), ValueError, r"optimizer: expected a torch\.optim\.Optimizer, got NoneType"),
    ("optimizer-class", lambda m: (torch.optim.SGD, m, recipe()), ValueError,
     r"optimizer: expected a torch\.optim\.Optimizer, got type"),
    ("optimizer-sparse", lambda m: (SparseOptimizer(_sgd(m), m, recipe()), m, recipe()), ValueError,
     r"optimizer: expected a torch\.optim\.Optimizer, got SparseOptimizer"),
    ("model-str", lambda m: (_sgd(m), "model", recipe()), ValueError, r"model: expected a torch\.nn\.Module, got str"),
    ("model-state-dict", lambda m: (_sgd(m), m.state_dict(), recipe()), ValueError,
     r"model: expected a torch\.nn\.Module, got OrderedDict"),
    ("model-class", lambda m: (_sgd(m), nn.Linear, recipe()), ValueError, r"model: expected a torch\.nn\.Module, got type"),
    ("recipe-int", lambda m: (_sgd(m), m, 42), RecipeError, r"path_or_dict: expected a YAML path"),
    ("recipe-missing", lambda m: (_sgd(m), m, "missing-recipe.yaml"), FileNotFoundError, r"recipe: file not found"),
    ("no-linear", lambda m: (_sgd(NoLinear()), NoLinear(), recipe()), RecipeError,
     r"pruning\[0\] \(enc\)\.targets: selects no module .*\(none of those types\)"),
    ("head-only", lambda m: (_sgd(HeadOnly()), HeadOnly(), recipe()), RecipeError,
     r"pruning\[0\] \(enc\)\.targets: selects no module .*candidates: classifier"),
    ("other-model", lambda m: (_sgd(make_tiny_bert(1)), m, recipe()), ValueError,
     rf"model: weight {Q} \(targeted by entry 'enc'\) is not among the optimizer's parameters"),
]


@pytest.mark.parametrize("case", BAD_CONSTRUCTION, ids=[c[0] for c in BAD_CONSTRUCTION])
def test_bad_construction(case):
    _, build, exc, match = case
    model = make_tiny_bert()
    args = build(model)
    with pytest.raises(exc, match=match):
        SparseOptimizer(*args)


def test_meta_weights_are_refused_naming_the_layer():
    with torch.device("meta"):
        model = make_tiny_bert()
    with pytest.raises(ValueError, match=rf"model: weight {Q} is a meta tensor \(no values\); materialise the model"):
        SparseOptimizer(_sgd(model), model, recipe(at_step=5))


def test_nan_weight_is_refused_naming_the_layer():
    model = make_tiny_bert()
    with torch.no_grad():
        model.get_parameter(Q)[0, 0] = float("nan")
    with pytest.raises(ValueError, match=rf"pruning\[0\] \(enc\): mask of {Q}: .*expected finite values"):
        SparseOptimizer(_sgd(model), model, recipe())


def test_complex_weight_is_refused_naming_the_layer():
    model = nn.Sequential(nn.Linear(8, 8, dtype=torch.complex64))
    with pytest.raises(ValueError, match=r"pruning\[0\] \(enc\): weight 0\.weight has dtype torch\.complex64; masks need a floating-point"):
        SparseOptimizer(_sgd(model), model, recipe())


def test_frozen_layers_outside_the_optimizer_are_pruned_once():
    model = make_tiny_bert()
    model.bert.encoder.layer[0].requires_grad_(False)
    opt = SparseOptimizer(torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1), model, recipe())
    train(model, opt, 1)
    assert is_nm(opt.masks[Q], 2, 4) and bool((model.get_parameter(Q)[~opt.masks[Q]] == 0).all())


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kind,pattern", [("nm", NM), ("transposable", NMT),
                                          ("unstructured", {"type": "unstructured", "sparsity": 0.5})])
def test_low_and_high_precision_weights(dtype, kind, pattern):
    model = make_tiny_bert().to(dtype)
    opt = SparseOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), model, recipe(pattern))
    x, y = batch(0)
    opt.zero_grad()
    torch.nn.functional.cross_entropy(model(input_ids=x).logits.float(), y).backward()
    opt.step()
    w, mk = model.get_parameter(Q), opt.masks[Q]
    assert w.dtype == dtype and mk.dtype == torch.bool and bool((w[~mk] == 0).all())
    if kind == "nm":
        assert is_nm(mk, 2, 4)
    elif kind == "transposable":
        assert is_transposable(mk, 2, 4)
    else:
        assert int((~mk).sum()) == mk.numel() // 2
    assert all(r["valid"] for r in opt.report())
