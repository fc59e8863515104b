"""TopKThreshold: which scores it keeps, its straight-through gradients, finite differences where defined."""
import math

import pytest
import torch

from sparse.mlpruning import TopKThreshold
from sparse.mlpruning.threshold import keep_count, threshold_for_count


def test_keeps_ceil_of_ratio_times_k_largest_scores():
    scores = torch.tensor([0.3, 0.9, 0.1, 0.5, 0.7, 0.2, 0.8])
    th = TopKThreshold(7, init=0.0)  # r = 0.5: ceil(3.5) = 4
    mask = th(scores)
    assert mask.dtype == scores.dtype and mask.shape == scores.shape
    assert mask.tolist() == [0, 1, 0, 1, 1, 0, 1]
    assert th.count() == 4 == int(th.hard_mask(scores).sum())


def test_init_keeps_all_and_ties_keep_lower_index():
    th = TopKThreshold(1536)
    assert th.count() == 1536 and bool(th(torch.zeros(1536)).all())
    th.set_count(2)
    tied = th.hard_mask(torch.ones(1536))
    assert tied[:2].all() and int(tied.sum()) == 2


@pytest.mark.parametrize("k", [1, 7, 12, 1536])
def test_set_count_round_trips_every_count(k):
    th = TopKThreshold(k)
    for c in range(k + 1) if k < 100 else (0, 1, 2, 767, 768, 1535, 1536):
        th.set_count(c)
        assert th.count() == c
        assert keep_count(threshold_for_count(c, k), k) == c


def test_multiple_rounds_up_and_caps():
    th = TopKThreshold(100, init=0.0, multiple=32)  # ceil(50) = 50 -> 64
    assert th.count() == 64
    th.set_count(99)
    assert th.count() == 100
    th.set_count(1)
    assert th.count() == 32
    th.set_count(0)
    assert th.count() == 0


def test_scores_get_the_output_gradient_and_threshold_the_documented_one():
    torch.manual_seed(0)
    k = 10
    scores = torch.randn(k, requires_grad=True)
    g = torch.randn(k)
    for mode in ("chain", "paper"):
        th = TopKThreshold(k, init=0.3, grad=mode)
        mask = th(scores)
        (mask * g).sum().backward()
        assert torch.equal(scores.grad, g)  # straight through, pruned units included
        kept_sum = float((g * mask.detach()).sum())
        if mode == "paper":
            expected = kept_sum
        else:
            s = 1 / (1 + math.exp(-0.3))
            expected = kept_sum * k * s * (1 - s) / th.count()
        assert th.threshold.grad.item() == pytest.approx(expected, rel=1e-5)
        scores.grad = None


@pytest.mark.parametrize("t0", [-2.0, 0.0, 1.5])
def test_chain_gradient_matches_finite_differences_of_the_kept_count(t0):
    # L = c * sum(mask) depends on the mask only through K = ceil(sigmoid(t) k): its finite difference
    # over a step spanning many units is c * k * sigmoid'(t), which the chain estimator must give.
    k, c, h = 200_000, 0.37, 1e-2
    scores = torch.rand(k, generator=torch.Generator().manual_seed(1))

    def loss(t):
        th = TopKThreshold(k, init=t)
        return c * th(scores).sum(), th

    value, th = loss(t0)
    value.backward()
    fd = (loss(t0 + h)[0].item() - loss(t0 - h)[0].item()) / (2 * h)
    assert th.threshold.grad.item() == pytest.approx(fd, rel=0.01)


def test_threshold_gradient_moves_towards_keeping_more_when_kept_units_help():
    # kept units lower the loss (g < 0 on kept units): gradient descent must raise t (keep more)
    k = 50
    th = TopKThreshold(k, init=0.0)
    scores = torch.linspace(0, 1, k)
    (-(th(scores))).sum().backward()
    assert th.threshold.grad.item() < 0


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "3"])
def test_bad_units(bad):
    with pytest.raises(ValueError, match="units"):
        TopKThreshold(bad)


def test_bad_arguments_name_themselves():
    with pytest.raises(ValueError, match="multiple"):
        TopKThreshold(4, multiple=0)
    with pytest.raises(ValueError, match="grad"):
        TopKThreshold(4, grad="exact")
    with pytest.raises(ValueError, match="init"):
        TopKThreshold(4, init=float("nan"))
    with pytest.raises(ValueError, match="scores"):
        TopKThreshold(4)(torch.zeros(5))
    with pytest.raises(ValueError, match="count"):
        TopKThreshold(4).set_count(5)
