"""Pruning building blocks: pattern masks from recipe patterns, block masks, schedules, target selection."""
import pytest
import torch

from sparse.masks import is_nm, is_transposable
from sparse.pruning.block import block_mask
from sparse.pruning.patterns import UnstructuredPattern, pattern_from_recipe
from sparse.pruning.schedules import cubic_sparsity, is_update_step, sparsity_at
from sparse.pruning.targets import module_filter, select_modules
from sparse.recipe import Pattern, RecipeError, Schedule, Targets


def pattern_mask(weight, pattern, sparsity=None):
    return pattern_from_recipe(pattern).mask(weight, sparsity)


def mask_valid(mask, pattern, sparsity=None):
    return pattern_from_recipe(pattern).valid(mask, sparsity)


def fits(pattern, shape):
    return pattern_from_recipe(pattern).fits(shape)


def unstructured_mask(weight, sparsity):
    return UnstructuredPattern(sparsity).mask(weight)


def w(shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_nm_and_transposable_masks(dtype):
    x = w((16, 32)).to(dtype)
    m = pattern_mask(x, Pattern("nm", n=2, m=4))
    assert m.dtype == torch.bool and m.shape == x.shape and is_nm(m, 2, 4)
    assert mask_valid(m, Pattern("nm", n=2, m=4))
    t = pattern_mask(x, Pattern("nm", n=2, m=4, transposable=True, solver="exact"))
    assert is_transposable(t, 2, 4) and mask_valid(t, Pattern("nm", n=2, m=4, transposable=True))
    t8 = pattern_mask(x, Pattern("nm", n=4, m=8, transposable=True, solver="auto"))
    assert is_transposable(t8, 4, 8)
    # a plain 2:4 mask is not (generally) transposable: validity checks the declared pattern
    assert not mask_valid(m, Pattern("nm", n=2, m=4, transposable=True)) or is_transposable(m, 2, 4)


def test_nm_keeps_largest_per_group():
    x = torch.tensor([[0.1, -3.0, 2.0, 0.5, 1.0, 1.0, -1.0, 0.0]])
    m = pattern_mask(x, Pattern("nm", n=2, m=4))
    assert m.tolist() == [[False, True, True, False, True, True, False, False]]


def test_conv_weight_flattened():
    x = w((8, 2, 3, 2))  # in*kh*kw = 12
    m = pattern_mask(x, Pattern("nm", n=2, m=4))
    assert m.shape == x.shape and is_nm(m.reshape(8, -1), 2, 4)


def test_unstructured_exact_count_and_ties_deterministic():
    x = w((10, 10))
    m = unstructured_mask(x, 0.73)
    assert int((~m).sum()) == 73
    kept_min = x.abs()[m].min()
    assert torch.all(x.abs()[~m] <= kept_min)
    ties = torch.ones(4, 4)
    a, b = unstructured_mask(ties, 0.5), unstructured_mask(ties.clone(), 0.5)
    assert torch.equal(a, b) and int(a.sum()) == 8
    assert unstructured_mask(x, 0.0).all()


def test_block_mask_keeps_largest_blocks():
    x = torch.zeros(8, 8)
    x[0:4, 4:8] = 5.0
    x[4:8, 0:4] = 1.0
    m = block_mask(x, 4, 4, 0.5)
    assert m[0:4, 4:8].all() and m[4:8, 0:4].all() and not m[0:4, 0:4].any() and not m[4:8, 4:8].any()
    assert mask_valid(m, Pattern("block", sparsity=0.5, block=(4, 4)))
    with pytest.raises(ValueError, match="divisible by the block 3x3"):
        block_mask(x, 3, 3, 0.5)
    with pytest.raises(ValueError, match=r"sparsity: expected a number in \[0, 1\)"):
        block_mask(x, 4, 4, 1.0)


def test_fits_names_the_reason():
    assert fits(Pattern("nm", n=2, m=4), (8, 12)) is None
    assert "in_features 10 is not divisible by m=4" in fits(Pattern("nm", n=2, m=4), (8, 10))
    assert "out_features 6" in fits(Pattern("nm", n=2, m=4, transposable=True), (6, 8))
    assert "block 4x4" in fits(Pattern("block", sparsity=0.5, block=(4, 4)), (8, 6))
    assert fits(Pattern("unstructured", sparsity=0.5), (3, 5)) is None


def test_nan_weights_raise():
    x = w((4, 8))
    x[0, 0] = float("nan")
    with pytest.raises(ValueError, match="finite"):
        pattern_mask(x, Pattern("nm", n=2, m=4))


def test_cubic_schedule_formula():
    assert cubic_sparsity(0, 0.0, 0.8, 10, 20) == 0.0
    assert cubic_sparsity(20, 0.0, 0.8, 10, 20) == 0.8
    assert cubic_sparsity(99, 0.1, 0.8, 10, 20) == 0.8
    assert cubic_sparsity(15, 0.1, 0.8, 10, 20) == pytest.approx(0.8 + (0.1 - 0.8) * 0.5 ** 3)
    s = Schedule("cubic", initial_sparsity=0.0, start_step=10, end_step=20, frequency=4)
    assert sparsity_at(s, 0.8, 9) is None
    assert [t for t in range(30) if is_update_step(s, t, 0, active=t > 10)] == [10, 14, 18, 20]
    o = Schedule("oneshot", at_step=5)
    assert sparsity_at(o, 0.5, 4) is None and sparsity_at(o, 0.5, 5) == 0.5
    assert [t for t in range(0, 100) if is_update_step(o, t, 40, active=t > 5)] == [5, 40, 80]


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(10, 8)
        self.encoder = torch.nn.ModuleDict({"q_proj": torch.nn.Linear(8, 8), "ffn": torch.nn.Linear(8, 16)})
        self.norm = torch.nn.LayerNorm(8)
        self.conv = torch.nn.Conv2d(2, 4, 3)
        self.classifier = torch.nn.Linear(16, 3)


def test_targets_default_types_and_excludes():
    net = Net()
    names = [f for f, _ in select_modules(net, Targets())]
    assert names == ["encoder.q_proj", "encoder.ffn"]  # no embedding, norm, conv or classifier head
    names = [f for f, _ in select_modules(net, Targets(types=("Linear", "Conv2d"), exclude=()))]
    assert names == ["encoder.q_proj", "encoder.ffn", "conv", "classifier"]
    keep = module_filter(Targets(include=(r"q_proj",)))
    assert keep(net.encoder["q_proj"], "encoder.q_proj") and not keep(net.encoder["ffn"], "encoder.ffn")
    assert not keep(net.norm, "encoder.q_proj")  # wrong type


def test_targets_regex_matching_nothing_lists_candidates():
    with pytest.raises(RecipeError, match=r"regex 'q_prj\$' matches no Linear module; near candidates: .*encoder\.q_proj"):
        select_modules(Net(), Targets(include=(r"q_prj$",)))
    with pytest.raises(RecipeError, match="selects no module"):
        select_modules(Net(), Targets(include=(r"q_proj",), exclude=(r"encoder",)))
