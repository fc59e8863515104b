"""Where a sharded weight's mask is computed (sparse.distributed.sharding.plan_layout), in one process:
whenever the plan says shard-local, the masks of the shards (torch.chunk, as FSDP2 shards) put
together are bit-identical to the mask of the whole weight; it says "gather" exactly when a group or
tile would straddle a shard boundary."""
import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from torch.distributed.tensor import Partial, Replicate, Shard  # noqa: E402

from sparse.distributed.sharding import plan_layout  # noqa: E402
from sparse.pruning.patterns import BlockPattern, NMPattern, TransposableNMPattern, UnstructuredPattern  # noqa: E402


def _offsets(length: int, parts: int) -> list[int]:
    sizes = [c.shape[0] for c in torch.arange(length).chunk(parts)]
    return [sum(sizes[:i]) for i in range(len(sizes))]


@settings(max_examples=60, deadline=None)
@given(st.sampled_from([(1, 2), (2, 4), (1, 4)]), st.booleans(), st.integers(1, 6), st.integers(1, 5),
       st.integers(1, 6), st.sampled_from([0, 1]), st.integers(0, 2 ** 16))
def test_shard_local_masks_equal_whole_weight_masks(nm, transposable, a, b, world, dim, seed):
    n, m = nm
    pattern = TransposableNMPattern(n, m, "exact") if transposable else NMPattern(n, m)
    w = torch.randn(m * a, m * b, generator=torch.Generator().manual_seed(seed))
    w[0, :m] = 1.0  # a tie: broken the same way on a shard and on the whole weight
    plan = plan_layout(tuple(w.shape), (world,), (Shard(dim),), pattern)
    needs = {0, 1} if transposable else {1}
    aligned = dim not in needs or all(o % m == 0 for o in _offsets(w.shape[dim], world))
    assert plan.shard_local == aligned, plan
    if plan.shard_local:
        parts = [pattern.mask(c) if c.numel() else torch.ones(c.shape, dtype=torch.bool) for c in w.chunk(world, dim)]
        assert torch.equal(torch.cat(parts, dim), pattern.mask(w))
    else:
        assert f"m={m}" in plan.reason and "straddle" in plan.reason


def test_row_sharding_never_splits_nm_groups():
    for rows in (1, 3, 7, 64):
        plan = plan_layout((rows, 16), (5,), (Shard(0),), NMPattern(2, 4))
        assert plan.shard_local and plan.describe() == "shard-local"


def test_global_patterns_gather_unless_replicated():
    for pattern in (UnstructuredPattern(0.5), BlockPattern((4, 4), 0.5)):
        plan = plan_layout((16, 16), (2,), (Shard(0),), pattern)
        assert not plan.shard_local and "ranks the whole weight" in plan.describe()
        assert plan_layout((16, 16), (2,), (Replicate(),), pattern).shard_local  # every rank holds it whole
        assert plan_layout((16, 16), (1,), (Shard(0),), pattern).shard_local  # one shard is the whole weight


def test_hsdp_and_conv_layouts():
    tiles = TransposableNMPattern(2, 4)
    assert plan_layout((16, 8), (2, 2), (Replicate(), Shard(0)), tiles).shard_local  # 8 rows per shard
    assert not plan_layout((24, 8), (2, 4), (Replicate(), Shard(0)), tiles).shard_local  # 6 rows per shard
    assert plan_layout((8, 3, 2, 2), (2,), (Shard(0),), NMPattern(2, 4)).shard_local  # conv: rows only
    assert not plan_layout((8, 4, 3, 3), (2,), (Shard(1),), NMPattern(2, 4)).shard_local
    assert not plan_layout((16, 16), (2, 2), (Shard(0), Shard(0)), tiles).shard_local  # nested: gathered


def test_partial_placement_is_refused():
    with pytest.raises(ValueError, match="partial sums"):
        plan_layout((16, 16), (2,), (Partial(),), NMPattern(2, 4))


def test_bad_arguments_name_what_was_expected(tmp_path):
    from sparse.distributed.checkpoint import load_sharded
    from sparse.optim import SparseOptimizer

    model = torch.nn.Sequential(torch.nn.Linear(8, 8))
    recipe = {"pruning": [{"pattern": {"type": "nm", "n": 2, "m": 4}, "targets": {"include": [r"^0$"]}}]}
    with pytest.raises(ValueError, match="allow_gather: expected a bool, got 'no'"):
        SparseOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), model, recipe, allow_gather="no")
    opt = SparseOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), model, recipe)
    with pytest.raises(ValueError, match="step: expected an integer >= 0, got -1"):
        opt.state_dict_template(-1)
    assert opt.state_dict_template(0)["sparse"]["masks"]["0.weight"].dtype == torch.bool
    with pytest.raises(ValueError, match="checkpoint_id: expected a folder written by save_sharded"):
        load_sharded(tmp_path / "missing", model, opt)
    with pytest.raises(ValueError, match="sparse_optimizer: expected a sparse.SparseOptimizer"):
        load_sharded(tmp_path, model, opt.optimizer)
