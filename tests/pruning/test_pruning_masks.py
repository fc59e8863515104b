"""Pruning building blocks: block masks, schedules, target selection (patterns: test_pruning_patterns)."""
import pytest
import torch

from sparse.pruning import BlockPattern
from sparse.pruning.block import block_mask
from sparse.pruning.schedules import cubic_sparsity, is_update_step, sparsity_at
from sparse.pruning.targets import module_filter, select_modules
from sparse.recipe import RecipeError, Schedule, Targets


def test_block_mask_keeps_largest_blocks():
    x = torch.zeros(8, 8)
    x[0:4, 4:8] = 5.0
    x[4:8, 0:4] = 1.0
    m = block_mask(x, 4, 4, 0.5)
    assert m[0:4, 4:8].all() and m[4:8, 0:4].all() and not m[0:4, 0:4].any() and not m[4:8, 4:8].any()
    assert BlockPattern((4, 4), 0.5).valid(m)
    with pytest.raises(ValueError, match="divisible by the block 3x3"):
        block_mask(x, 3, 3, 0.5)
    with pytest.raises(ValueError, match=r"sparsity: expected a number in \[0, 1\)"):
        block_mask(x, 4, 4, 1.0)


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
