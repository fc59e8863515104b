"""sparse.nn.Dropout, the fast-dropout attention function and use_fast_dropout on a tiny BERT."""
from __future__ import annotations

import importlib

import pytest
import torch
from torch import nn

from sparse.nn.dropout import FAST_ATTENTION, Dropout, register_attention, use_fast_dropout
from sparse.ops import last_backend

D = importlib.import_module("sparse.ops.dropout")
requires_kernel = pytest.mark.skipif(D.native_isa() is None, reason="sparse._C without the dropout kernel")


# --------------------------------------------------------------------------- module
def test_module_is_a_drop_in_for_nn_dropout():
    m = Dropout(0.25)
    assert isinstance(m, nn.Dropout) and m.p == 0.25 and not m.inplace
    assert "p=0.25" in repr(m)
    x = torch.randn(64, 64) + 3
    m.eval()
    assert m(x) is x
    m.train()
    torch.manual_seed(0)
    y = m(x)
    torch.manual_seed(0)
    assert torch.equal(y, D.dropout(x, 0.25))
    assert 0.6 < float((y != 0).float().mean()) < 0.9
    assert m.state_dict() == {}


@pytest.mark.parametrize("p", [-0.5, 2.0, float("nan")])
def test_module_bad_p(p):
    with pytest.raises(ValueError, match="^p: "):
        Dropout(p)


def test_module_inplace_writes_back():
    x = torch.randn(100) + 3
    keep = x.clone()
    y = Dropout(0.5, inplace=True)(x)
    assert y is x
    assert not torch.equal(x, keep) and torch.equal((x != 0), (y != 0))


@requires_kernel
def test_module_runs_the_kernel_and_backward():
    m = Dropout(0.1)
    x = torch.randn(16, 128, 32, dtype=torch.bfloat16, requires_grad=True)
    m(x).float().sum().backward()
    assert last_backend("dropout") == "csrc-cpu"
    assert torch.isfinite(x.grad.float()).all()


def test_swap_plain_modules_and_back():
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.3), nn.Sequential(nn.Dropout(0.1, inplace=True)),
                          nn.Dropout2d(0.2), nn.AlphaDropout(0.2))
    model.eval()
    assert use_fast_dropout(model) is model
    assert type(model[1]) is Dropout and model[1].p == 0.3 and not model[1].training
    assert type(model[2][0]) is Dropout and model[2][0].inplace
    assert type(model[3]) is nn.Dropout2d and type(model[4]) is nn.AlphaDropout  # other kinds left alone
    use_fast_dropout(model)  # idempotent
    assert type(model[1]) is Dropout
    use_fast_dropout(model, enabled=False)
    assert type(model[1]) is nn.Dropout and type(model[2][0]) is nn.Dropout and model[1].p == 0.3
    with pytest.raises(ValueError, match="^model: "):
        use_fast_dropout("not a model")


# --------------------------------------------------------------------------- transformers
transformers = pytest.importorskip("transformers")
from transformers import BertConfig, BertModel  # noqa: E402
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS  # noqa: E402
from transformers.models.bert import modeling_bert  # noqa: E402


def tiny_bert(impl: str, p: float = 0.1, seed: int = 0) -> BertModel:
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=32, hidden_dropout_prob=p,
                     attention_probs_dropout_prob=p, attn_implementation=impl)
    return BertModel(cfg)


def inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 100, (3, 12), generator=g)
    mask = torch.ones(3, 12, dtype=torch.long)
    mask[1, 7:] = 0  # padding, so the attention mask matters
    return ids, mask


def qkv(seed=0, b=2, h=4, s=9, d=8):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, h, s, d, generator=g) for _ in range(3)]


def additive_mask(b=2, s=9):
    m = torch.zeros(b, 1, s, s)
    m[1, :, :, 6:] = torch.finfo(torch.float32).min
    return m


@pytest.mark.parametrize("training", [False, True])
def test_attention_matches_eager_exactly_when_dropout_is_off(training):
    register_attention()
    fn = ALL_ATTENTION_FUNCTIONS["sparse_fast_dropout"]
    module = tiny_bert("eager").encoder.layer[0].attention.self
    module.train(training)
    q, k, v = qkv()
    mask = additive_mask()
    want = modeling_bert.eager_attention_forward(module, q, k, v, mask, scaling=0.3, dropout=0.0)
    got = fn(module, q, k, v, mask, scaling=0.3, dropout=0.0)
    assert torch.equal(want[0], got[0]) and torch.equal(want[1], got[1])
    module.eval()  # eval with a non-zero p: dropout is off too
    want = modeling_bert.eager_attention_forward(module, q, k, v, mask, scaling=0.3, dropout=0.5)
    got = fn(module, q, k, v, mask, scaling=0.3, dropout=0.5)
    assert torch.equal(want[0], got[0]) and torch.equal(want[1], got[1])


def reference_probs(q, k, mask, scaling):
    w = torch.matmul(q, k.transpose(2, 3)) * scaling
    if mask is not None:
        w = w + mask
    return torch.softmax(w, dim=-1)


@requires_kernel
@pytest.mark.parametrize("name", list(FAST_ATTENTION))
def test_attention_training_path_is_eager_with_fast_dropout(name):
    register_attention()
    fn = ALL_ATTENTION_FUNCTIONS[name]
    module = tiny_bert("eager").encoder.layer[0].attention.self.train()
    q, k, v = qkv(1, b=2, h=4, s=33, d=8)
    mask = additive_mask(2, 33)
    # the sdpa variant receives sdpa's bool masks (True = attend)
    passed = (mask == 0) if FAST_ATTENTION[name] == "sdpa" else mask
    out, weights = fn(module, q, k, v, passed, scaling=0.25, dropout=0.4)
    assert last_backend("dropout") == "csrc-cpu"
    probs = reference_probs(q, k, mask, 0.25)
    kept = weights != 0
    assert torch.allclose(weights[kept], probs[kept] / 0.6, rtol=1e-5, atol=1e-7)
    frac = float(kept[probs > 0].float().mean())
    assert 0.5 < frac < 0.7
    assert torch.allclose(out, torch.matmul(weights, v).transpose(1, 2), rtol=1e-5, atol=1e-6)


@requires_kernel
@pytest.mark.parametrize("mask_dtype", [torch.float32, torch.bfloat16])
def test_attention_training_path_promotes_as_eager_does(mask_dtype):
    # bf16 scores (autocast) with an fp32 mask are promoted to fp32, as eager's `weights + mask`; a mask of the
    # scores' own dtype is added in place, with the same result
    register_attention()
    fn = ALL_ATTENTION_FUNCTIONS["sparse_fast_dropout"]
    module = tiny_bert("eager").encoder.layer[0].attention.self.train()
    q, k, v = [t.requires_grad_() for t in qkv(3, b=2, h=4, s=33, d=8)]
    mask = additive_mask(2, 33).to(mask_dtype)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, weights = fn(module, q, k, v, mask, scaling=0.25, dropout=0.3)
    assert weights.dtype == torch.promote_types(torch.bfloat16, mask_dtype)
    probs = reference_probs(q.detach(), k.detach(), mask.float(), 0.25)
    kept = weights != 0
    assert torch.allclose(weights[kept].float(), probs[kept] / 0.7, rtol=3e-2, atol=1e-3)
    assert (weights[1, :, :, 6:] == 0).all()  # masked keys get no weight
    out.float().square().sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))


@requires_kernel
def test_sdpa_variant_applies_is_causal_when_no_mask_was_built():
    register_attention()
    fn = ALL_ATTENTION_FUNCTIONS["sparse_fast_dropout+sdpa"]
    module = tiny_bert("sdpa").encoder.layer[0].attention.self.train()
    module.is_causal = True
    q, k, v = qkv(2, s=10)
    _, weights = fn(module, q, k, v, None, scaling=0.3, dropout=0.2)
    assert (weights.triu(1) == 0).all()
    module.is_causal = False
    _, weights = fn(module, q, k, v, None, scaling=0.3, dropout=0.2)
    assert (weights.triu(1) != 0).any()


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_use_fast_dropout_on_tiny_bert(impl):
    model = tiny_bert(impl).eval()
    ids, mask = inputs()
    with torch.no_grad():
        before = model(ids, attention_mask=mask).last_hidden_state
    n_dropout = sum(type(m) is nn.Dropout for m in model.modules())
    assert n_dropout > 0
    use_fast_dropout(model)
    assert model.config._attn_implementation == {"eager": "sparse_fast_dropout",
                                                 "sdpa": "sparse_fast_dropout+sdpa"}[impl]
    assert sum(type(m) is Dropout for m in model.modules()) == n_dropout
    assert not any(type(m) is nn.Dropout for m in model.modules())
    with torch.no_grad():
        after = model(ids, attention_mask=mask).last_hidden_state
    assert torch.equal(before, after)  # eval: unchanged, bit for bit

    model.train()
    torch.manual_seed(0)
    out = model(ids, attention_mask=mask).last_hidden_state
    out.square().mean().backward()
    assert torch.isfinite(out).all()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    if D.native_isa() is not None:
        assert last_backend("dropout") == "csrc-cpu"
    torch.manual_seed(0)
    again = model(ids, attention_mask=mask).last_hidden_state
    assert torch.equal(out, again)  # reproducible from torch's seed
    assert not torch.equal(out.detach(), after)  # dropout did something

    assert "sparse" not in model.config.to_json_string()  # nothing of the switch is saved
    use_fast_dropout(model)  # idempotent
    assert model.config._attn_implementation.startswith("sparse_fast_dropout")
    use_fast_dropout(model, enabled=False)
    assert model.config._attn_implementation == impl
    assert sum(type(m) is nn.Dropout for m in model.modules()) == n_dropout
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(ids, attention_mask=mask).last_hidden_state, before)


def test_switch_off_is_bit_exact_with_plain_pytorch():
    ids, mask = inputs()
    plain = tiny_bert("eager").train()
    switched = use_fast_dropout(tiny_bert("eager"), enabled=True)
    use_fast_dropout(switched, enabled=False)
    switched.train()
    torch.manual_seed(3)
    a = plain(ids, attention_mask=mask).last_hidden_state
    torch.manual_seed(3)
    b = switched(ids, attention_mask=mask).last_hidden_state
    assert torch.equal(a, b)


def test_other_attention_implementations_are_kept():
    model = tiny_bert("eager")
    model.config._attn_implementation_internal = "flex_attention"  # as if it ran flex: not eager/sdpa
    use_fast_dropout(model)
    assert model.config._attn_implementation == "flex_attention"
    assert any(type(m) is Dropout for m in model.modules())
