"""The pattern API (sparse.pruning.patterns): mask / fits / valid / describe per kind, the one N:M
parser, recipe patterns as pattern objects, and the layer policy in recipes and convert."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import sparse.convert
from sparse.convert.targets import TargetFilter
from sparse.masks import is_nm, is_transposable, nm_mask, transposable_mask
from sparse.pruning import (BlockPattern, NMPattern, TransposableNMPattern, UnstructuredPattern, parse_pattern,
                            pattern_from_recipe)
from sparse.pruning.targets import select_modules
from sparse.recipe import Pattern, Targets, load_recipe


def w(shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------- per kind
def test_unstructured():
    p = UnstructuredPattern(0.8)
    x = w((10, 10))
    m = p.mask(x)
    assert m.dtype == torch.bool and m.shape == x.shape and int((~m).sum()) == 80
    assert x.abs()[~m].max() <= x.abs()[m].min()
    assert p.valid(m) and not p.valid(torch.ones_like(m)) and p.valid(m, sparsity=0.5)
    assert int((~p.mask(x, sparsity=0.25)).sum()) == 25  # the override (gradual schedules)
    assert p.fits((3, 5)) is None and p.fits((0, 5)) == "empty tensor" and "rank >= 2" in p.fits((7,))
    assert p.describe() == "unstructured 80%" and p.target_sparsity == 0.8
    # ties: a stable ascending sort, so among equal |w| the lower flat index is pruned first
    assert UnstructuredPattern(0.5).mask(torch.ones(4, 4)).flatten().tolist() == [False] * 8 + [True] * 8
    assert UnstructuredPattern(0.0).mask(x).all() and not UnstructuredPattern(1.0).mask(x).any()


def test_nm():
    p = NMPattern(2, 4)
    x = torch.tensor([[0.1, -3.0, 2.0, 0.5, 1.0, 1.0, -1.0, 0.0]])
    assert p.mask(x).tolist() == [[False, True, True, False, True, True, False, False]]  # ties: lower index
    y = w((8, 16), 1)
    assert torch.equal(p.mask(y), nm_mask(y, 2, 4)) and p.valid(p.mask(y))
    assert not p.valid(torch.ones(8, 16, dtype=torch.bool)) and not p.valid(torch.ones(8, 6, dtype=torch.bool))
    assert p.fits((8, 12)) is None and p.fits((8, 10)) == "in_features 10 is not divisible by m=4"
    assert p.fits((8, 0)) == "empty tensor"
    assert p.describe() == "2:4" and p.target_sparsity == 0.5 and not p.transposable
    conv = w((8, 2, 3, 2))  # flattened to [8, 12]
    assert p.mask(conv).shape == conv.shape and is_nm(p.mask(conv).reshape(8, 12), 2, 4)
    assert p.valid(p.mask(conv))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_dtypes(dtype):
    x = w((16, 32)).to(dtype)
    for p in (NMPattern(2, 4), TransposableNMPattern(2, 4), TransposableNMPattern(4, 8), UnstructuredPattern(0.7),
              BlockPattern((8, 8), 0.5)):
        m = p.mask(x)
        assert m.dtype == torch.bool and m.shape == x.shape and p.valid(m), (p, dtype)


def test_transposable():
    p = TransposableNMPattern(2, 4, method="exact")
    y = w((8, 16), 2)
    m = p.mask(y)
    assert torch.equal(m, transposable_mask(y, 2, 4, method="exact")) and is_transposable(m, 2, 4)
    assert p.valid(m) and p.valid(m.to(torch.uint8))  # numeric masks: non-zero = kept
    plain = NMPattern(2, 4).mask(y)
    assert p.valid(plain) == is_transposable(plain, 2, 4)
    assert "out_features 6" in p.fits((6, 8)) and "in_features 6" in p.fits((8, 6)) and p.fits((8, 8)) is None
    assert p.describe() == "2:4 transposable" and p.transposable and p.target_sparsity == 0.5
    assert is_transposable(TransposableNMPattern(4, 8).mask(w((16, 16))), 4, 8)


def test_block():
    p = BlockPattern((4, 4), 0.5)
    x = torch.zeros(8, 8)
    x[0:4, 4:8] = 5.0
    x[4:8, 0:4] = 1.0
    m = p.mask(x)
    assert m[0:4, 4:8].all() and m[4:8, 0:4].all() and not m[0:4, 0:4].any() and not m[4:8, 4:8].any()
    assert p.valid(m)
    ragged = m.clone()
    ragged[0, 0] = True  # a block half kept is not a block mask
    assert not p.valid(ragged) and not p.valid(torch.ones(8, 8, dtype=torch.bool))
    assert p.fits((8, 6)) == "shape [8, 6] is not divisible by the block 4x4"
    assert BlockPattern((32, 32), 0.9).describe() == "block 32x32 90%"
    with pytest.raises(ValueError, match=r"weight: shape \(8, 6\) does not fit pattern block 4x4 50%"):
        p.mask(torch.ones(8, 6))


def test_conforms_means_already_sparse_enough():
    x = w((8, 16), 3)
    for p in (NMPattern(2, 4), TransposableNMPattern(2, 4), BlockPattern((4, 4), 0.5), UnstructuredPattern(0.5)):
        assert not p.conforms(x)
        pruned = x * p.mask(x)
        assert p.conforms(pruned) and p.conforms(pruned != 0)
    # fewer non-zeros than kept slots still conform (a zero may stand for a kept weight)
    assert NMPattern(2, 4).conforms(torch.eye(8)) and TransposableNMPattern(2, 4).conforms(torch.eye(8))


@pytest.mark.parametrize("make,match", [
    (lambda: NMPattern(4, 4), r"n: expected n < m"),
    (lambda: NMPattern(5, 4), r"n: expected n < m"),
    (lambda: NMPattern(0, 4), r"n: expected 1 <= n < m, got n=0"),
    (lambda: NMPattern(2, 64), r"m: expected 2 <= m <= 32, got m=64"),
    (lambda: NMPattern(2.0, 4), r"n: expected an int, got float"),
    (lambda: TransposableNMPattern(2, 4, method="hungarian"), r"method: expected one of auto, exact"),
    (lambda: UnstructuredPattern(1.5), r"sparsity: expected a number in \[0, 1\], got 1.5"),
    (lambda: UnstructuredPattern(-0.1), r"sparsity: expected a number in \[0, 1\]"),
    (lambda: UnstructuredPattern("0.5"), r"sparsity: expected a number"),
    (lambda: BlockPattern((4, 4), 1.0), r"sparsity: expected a number in \[0, 1\), got 1.0"),
    (lambda: BlockPattern((0, 4), 0.5), r"block: expected \(rows, cols\) with two integers >= 1, got \(0, 4\)"),
    (lambda: BlockPattern(4, 0.5), r"block: expected \(rows, cols\)"),
])
def test_constructor_errors_name_the_argument(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_mask_errors():
    with pytest.raises(ValueError, match="finite"):
        NMPattern(2, 4).mask(torch.tensor([[float("nan"), 1.0, 2.0, 3.0]]))
    with pytest.raises(ValueError, match="finite"):
        UnstructuredPattern(0.5).mask(torch.tensor([[float("inf"), 1.0]]))
    with pytest.raises(ValueError, match=r"weight: shape \(8,\) does not fit pattern 2:4: expected a weight of rank"):
        NMPattern(2, 4).mask(torch.ones(8))
    with pytest.raises(ValueError, match=r"sparsity: expected a number in \[0, 1\)"):
        BlockPattern((2, 2), 0.5).mask(torch.ones(4, 4), sparsity=1.0)


def test_patterns_are_frozen_and_hashable():
    p = NMPattern(2, 4)
    with pytest.raises(AttributeError):
        p.n = 1
    assert {p, NMPattern(2, 4), TransposableNMPattern(2, 4)} == {NMPattern(2, 4), TransposableNMPattern(2, 4)}
    assert BlockPattern([4, 4], 0.5) == BlockPattern((4, 4), 0.5)


# ---------------------------------------------------------------------------------------------- parser
@pytest.mark.parametrize("text,kw,expected", [
    ("2:4", {}, NMPattern(2, 4)),
    (" 4:8 ", {}, NMPattern(4, 8)),
    ("2:4T", {}, TransposableNMPattern(2, 4)),
    ("2:4t", {"method": "exact"}, TransposableNMPattern(2, 4, "exact")),
    ("2:4", {"transposable": True, "method": "greedy"}, TransposableNMPattern(2, 4, "greedy")),
    ("1:32", {}, NMPattern(1, 32)),
    (NMPattern(2, 4), {"transposable": True}, TransposableNMPattern(2, 4)),
    (TransposableNMPattern(1, 2, "flow"), {}, TransposableNMPattern(1, 2, "flow")),
])
def test_parse_pattern(text, kw, expected):
    assert parse_pattern(text, **kw) == expected


@pytest.mark.parametrize("text", ["2-4", "", "0:4", "4:4", "5:4", "2:64", "2:4:8", "a:b", "2:4X", "-1:4", None, 2.4])
def test_parse_pattern_rejects(text):
    with pytest.raises(ValueError, match=r"^pattern: expected N:M .*1 <= N < M <= 32.*got"):
        parse_pattern(text)


def test_parse_pattern_names_the_argument_and_checks_options():
    with pytest.raises(ValueError, match=r"^--pattern: expected N:M.*got 'four'"):
        parse_pattern("four", name="--pattern")
    with pytest.raises(ValueError, match=r"transposable: expected a bool, got 'yes'"):
        parse_pattern("2:4", transposable="yes")
    with pytest.raises(ValueError, match=r"method: expected one of auto, exact, approx, greedy, flow, got 'x'"):
        parse_pattern("2:4", method="x")
    assert sparse.convert.parse_pattern is parse_pattern  # one parser, re-exported


# ------------------------------------------------------------------------------------ recipe patterns
@pytest.mark.parametrize("spec,expected", [
    ({"type": "nm", "n": 2, "m": 4}, NMPattern(2, 4)),
    ({"type": "nm", "n": 2, "m": 4, "transposable": True, "solver": "exact"}, TransposableNMPattern(2, 4, "exact")),
    ({"type": "unstructured", "sparsity": 0.8}, UnstructuredPattern(0.8)),
    ({"type": "block", "block": [32, 16], "sparsity": 0.9}, BlockPattern((32, 16), 0.9)),
])
def test_recipe_patterns_become_pattern_objects(spec, expected):
    rp = Pattern.from_dict(spec, "pattern")
    assert pattern_from_recipe(rp) == rp.to_pattern() == expected
    assert rp.describe() == expected.describe() and rp.target_sparsity == expected.target_sparsity
    assert pattern_from_recipe(expected) is expected


# ------------------------------------------------------------------------------------------- property
@st.composite
def pattern_and_shape(draw):
    kind = draw(st.sampled_from(["unstructured", "nm", "transposable", "block"]))
    if kind == "unstructured":
        p = UnstructuredPattern(draw(st.floats(0.0, 1.0)))
        rows, cols = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    elif kind == "nm":
        m = draw(st.sampled_from([2, 4, 8]))
        p = NMPattern(draw(st.integers(1, m - 1)), m)
        rows, cols = draw(st.integers(1, 10)), m * draw(st.integers(1, 4))
    elif kind == "transposable":
        m = draw(st.sampled_from([2, 4, 8]))
        p = TransposableNMPattern(draw(st.integers(1, m - 1)), m, draw(st.sampled_from(["auto", "exact", "greedy"])))
        rows, cols = m * draw(st.integers(1, 3)), m * draw(st.integers(1, 3))
    else:
        r, c = draw(st.integers(1, 4)), draw(st.integers(1, 4))
        p = BlockPattern((r, c), draw(st.floats(0.0, 0.99)))
        rows, cols = r * draw(st.integers(1, 4)), c * draw(st.integers(1, 4))
    # some shapes as conv weights: [out, in, k] with in * k == cols
    k = draw(st.sampled_from([d for d in (1, 2, 3) if cols % d == 0]))
    shape = (rows, cols) if k == 1 else (rows, cols // k, k)
    return p, shape


@settings(max_examples=60, deadline=None)
@given(pattern_and_shape(), st.integers(0, 2 ** 16), st.booleans())
def test_mask_is_always_valid(ps, seed, ties):
    p, shape = ps
    assert p.fits(shape) is None
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(-2, 3, shape, generator=g).float() if ties else torch.randn(*shape, generator=g)
    m = p.mask(x)
    assert m.dtype == torch.bool and m.shape == x.shape
    assert p.valid(m)
    assert torch.equal(m, p.mask(x.clone()))  # deterministic, ties included
    assert p.conforms(x * m)
    # the kept count, recomputed from each kind's rule
    numel = math.prod(shape)
    if isinstance(p, (NMPattern, TransposableNMPattern)):
        expected = numel // p.m * p.n
    elif isinstance(p, UnstructuredPattern):
        expected = numel - math.floor(p.sparsity * numel + 0.5)
    else:
        blocks = numel // (p.block[0] * p.block[1])
        expected = max(blocks - math.floor(p.sparsity * blocks + 0.5), 1) * p.block[0] * p.block[1]
    assert int(m.sum()) == expected


# --------------------------------------------------------------------------------------- layer policy
HEADS = ("cls.predictions.transform.dense", "lm_head", "classifier", "bert.pooler.dense")


class _Net(torch.nn.Module):
    """Module names as in HF BERT models with MLM, LM and classification heads."""

    def __init__(self):
        super().__init__()
        lin = lambda: torch.nn.Linear(8, 8)  # noqa: E731
        self.bert = torch.nn.Module()
        self.bert.encoder = torch.nn.ModuleDict({"layer": torch.nn.ModuleList([torch.nn.Module()])})
        self.bert.encoder.layer[0].intermediate = torch.nn.Module()
        self.bert.encoder.layer[0].intermediate.dense = lin()
        self.bert.pooler = torch.nn.Module()
        self.bert.pooler.dense = lin()
        self.cls = torch.nn.Module()
        self.cls.predictions = torch.nn.Module()
        self.cls.predictions.transform = torch.nn.Module()
        self.cls.predictions.transform.dense = lin()
        self.lm_head = lin()
        self.classifier = lin()


def test_policy_heads_are_dense_in_recipes_and_convert():
    body = "bert.encoder.layer.0.intermediate.dense"
    recipe = load_recipe({"name": "t", "pruning": [{"pattern": {"type": "nm", "n": 2, "m": 4}}]})
    chosen = [fqn for fqn, _ in select_modules(_Net(), recipe.pruning[0].targets)]
    assert chosen == [body]
    assert [f for f, _ in select_modules(_Net(), Targets(exclude=()))] == [
        body, "bert.pooler.dense", "cls.predictions.transform.dense", "lm_head", "classifier"]
    f = TargetFilter()
    assert f.wanted(f"{body}.weight", torch.float32, (8, 8))
    for head in HEADS:
        assert not f.wanted(f"{head}.weight", torch.float32, (8, 8)), head
    # both read the same policy
    from sparse import policy

    assert all(policy.is_head(h) for h in HEADS) and not policy.is_head(body)


def test_policy_on_a_real_masked_lm():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=32, max_position_embeddings=32)
    model = transformers.BertForPreTraining(cfg)
    recipe = load_recipe({"name": "t", "pruning": [{"pattern": {"type": "nm", "n": 2, "m": 4}}]})
    chosen = {fqn for fqn, _ in select_modules(model, recipe.pruning[0].targets)}
    linear = {fqn for fqn, mod in model.named_modules() if isinstance(mod, torch.nn.Linear)}
    assert chosen == {fqn for fqn in linear if ".encoder." in f".{fqn}."}
    assert "cls.predictions.transform.dense" in linear - chosen and "bert.pooler.dense" in linear - chosen
    f = TargetFilter()
    converted = {k[: -len(".weight")] for k, v in model.state_dict().items()
                 if f.wanted(k, v.dtype, tuple(v.shape))}
    assert converted == chosen  # recipes and convert agree
