import torch

from spine_hf.config import OptimConfig
from spine_hf.losses import build_loss, class_weights, soft_ordinal_targets


def test_soft_ordinal_targets_peak_at_the_grade_and_fall_off():
    targets = soft_ordinal_targets(torch.tensor([0, 2, 4]), scale=2.0)
    assert torch.allclose(targets.sum(1), torch.ones(3))
    assert targets.argmax(1).tolist() == [0, 2, 4]
    row = targets[1]
    assert row[1] == row[3] and row[1] > row[0] > 0  # symmetric, decreasing with distance


def test_ordinal_loss_punishes_distant_mistakes_more_and_ce_does_not():
    labels = torch.tensor([0])
    near = torch.tensor([[0.0, 5.0, 0.0, 0.0, 0.0]])  # says grade 1
    far = torch.tensor([[0.0, 0.0, 0.0, 0.0, 5.0]])  # says grade 4
    ordinal = build_loss(OptimConfig(loss="ordinal"), [1] * 5)
    ce = build_loss(OptimConfig(loss="ce"), [1] * 5)
    assert ordinal(near, labels) < ordinal(far, labels)
    assert torch.isclose(ce(near, labels), ce(far, labels))


def test_class_weights_are_inverse_frequency():
    weights = class_weights([100, 50, 25, 25, 0])
    assert weights[0] < weights[1] < weights[2] == weights[3] < weights[4]
    assert torch.allclose(class_weights([10] * 5), torch.ones(5))
    weighted = build_loss(OptimConfig(loss="ordinal", class_weights=True), [100, 10, 10, 10, 10])
    logits = torch.zeros(2, 5)
    assert torch.isfinite(weighted(logits, torch.tensor([0, 3])))
