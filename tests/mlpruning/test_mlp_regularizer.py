"""The remaining fraction p (downstream shrinking counted) and the adaptive regulariser: value, gradient."""
import pytest
import torch

from sparse.mlpruning import MLPruner
from sparse.mlpruning.regularizer import AdaptiveRegularizer, MatrixCount, expected_weights

H, FFN, HEADS, LAYERS = 64, 128, 4, 2
DENSE = LAYERS * (4 * H * H + 2 * H * FFN)


def test_value_and_adaptive_weight():
    reg = AdaptiveRegularizer(0.5)
    far = reg(torch.tensor(1.0))       # R = 0.25 = (1 - T)^2: lambda = lambda_max
    assert far.item() == pytest.approx(20000 * 0.25)
    assert reg.last["lambda"] == 20000
    mid = reg(torch.tensor(0.55))      # R = 0.0025: max(20000 * 0.0025 / 0.25, 50) = 200
    assert reg.last["lambda"] == pytest.approx(200) and mid.item() == pytest.approx(200 * 0.0025, rel=1e-4)
    near = reg(torch.tensor(0.51))     # R = 1e-4 < 3e-4: lambda_near
    assert reg.last["lambda"] == 10 and near.item() == pytest.approx(10 * 1e-4, rel=1e-4)
    below = torch.tensor(0.4, requires_grad=True)
    out = reg(below)
    out.backward()
    assert out.item() == 0 and below.grad.item() == 0
    assert AdaptiveRegularizer(1.0)(torch.tensor(1.0)).item() == 0


def test_lambda_floor_applies_between_near_and_far():
    reg = AdaptiveRegularizer(0.5, lambda_max=100.0, lambda_min=50.0)
    reg(torch.tensor(0.6))             # 100 * 0.01 / 0.25 = 4 -> floor 50
    assert reg.last["lambda"] == 50


def test_expected_weights_gradient_matches_finite_differences():
    mats = [MatrixCount(8, 4, row_unit="h"), MatrixCount(4, 8, row_unit="o", col_unit="h"),
            MatrixCount(16, 4, row_unit="f"), MatrixCount(4, 16, row_unit="g", col_unit="f", block_unit="b"),
            MatrixCount(4, 4)]
    keys = ("h", "o", "f", "g", "b")
    reg = AdaptiveRegularizer(0.3, lambda_near=0.0)

    def loss(t):
        ratios = {k: torch.sigmoid(t[i]) for i, k in enumerate(keys)}
        p = expected_weights(mats, ratios) / 304.0
        return reg.penalty(p) * 7.0   # lambda is a number, not differentiated: any constant will do

    t = torch.tensor([2.0, 0.5, 1.0, -0.3, 1.5], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(loss, (t,))


def test_fraction_counts_downstream_shrinking(tiny):
    model = tiny("bert")
    pruner = MLPruner(model, {"levels": ["heads", "rows"], "rows": ["ffn_in"]})
    assert pruner.reference_weights == DENSE
    for i in range(LAYERS):
        pruner.units[f"layer{i}_heads"].topk.set_count(2)        # half the heads
        pruner.units[f"layer{i}_ffn_in_rows"].topk.set_count(32)  # a quarter of the FFN neurons
    d = H // HEADS
    per_layer = 3 * (2 * d) * H + H * (2 * d) + 32 * H + H * 32  # Q K V rows, O columns, FC1 rows, FC2 columns
    assert pruner.remaining_fraction(hard=True) == pytest.approx(LAYERS * per_layer / DENSE)
    packed = pruner.pack()
    assert packed.config.mlpruning["encoder_weights"] == LAYERS * per_layer


def test_soft_fraction_follows_the_keep_ratios(tiny):
    model = tiny("bert")
    pruner = MLPruner(model, {"levels": ["heads"], "target": 0.5})
    assert pruner.remaining_fraction().item() == pytest.approx(1.0, abs=1e-3)
    with torch.no_grad():
        for u in pruner.units.values():
            u.topk.threshold.fill_(0.0)  # r = 1/2 of the heads: Q, K, V and O columns halve
    per_layer = 0.5 * 4 * H * H + 2 * H * FFN
    assert pruner.remaining_fraction().item() == pytest.approx(per_layer / (4 * H * H + 2 * H * FFN))


def test_regularization_loss_pushes_thresholds_down_while_above_target(tiny):
    model = tiny("distilbert")
    pruner = MLPruner(model, {"levels": ["heads", "rows"], "target": 0.4, "threshold_init": 2.0})
    loss = pruner.regularization_loss()
    assert loss.dim() == 0 and loss.item() > 0
    loss.backward()
    grads = [p.grad for p in pruner.threshold_parameters()]
    assert all(g is not None and g.item() > 0 for g in grads)  # descent lowers every threshold
    assert pruner.regularizer.last["p"] > 0.4


def test_training_drives_the_fraction_to_the_target_without_overshoot(tiny):
    # thresholds without momentum (pruner.param_groups): the regulariser pulls p down to T and lets go;
    # with beta1 = 0.9 the same run ends near 0.21
    torch.manual_seed(0)
    model = tiny("bert", heads=8, ffn=256).train()
    pruner = MLPruner(model, {"levels": ["heads", "rows"], "rows": ["ffn_in"], "target": 0.5,
                              "threshold_init": 4.0, "threshold_lr": 0.2})
    groups = pruner.param_groups()
    assert groups[1]["betas"] == (0.0, 0.999)
    opt = torch.optim.AdamW([{"params": list(model.parameters()), "lr": 1e-3}, *groups])
    g = torch.Generator().manual_seed(0)
    lowest = 1.0
    for _ in range(120):
        x = torch.randint(3, 120, (8, 12), generator=g)
        loss = torch.nn.functional.cross_entropy(model(input_ids=x).logits, x[:, 0] % 3)
        opt.zero_grad()
        (loss + pruner.regularization_loss()).backward()
        opt.step()
        lowest = min(lowest, pruner.remaining_fraction(hard=True))
    final = pruner.remaining_fraction(hard=True)
    assert 0.45 <= final <= 0.57 and lowest >= 0.45
    assert pruner.remaining_fraction().item() == pytest.approx(final, abs=1e-6)  # the value counts the masks
