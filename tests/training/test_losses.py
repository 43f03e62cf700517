import torch

from spine_hf.config import OptimConfig
from spine_hf.training.losses import build_loss, class_weights, soft_ordinal_targets


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


def test_a_teacher_pulls_the_loss_towards_its_probabilities_by_its_weight():
    torch.manual_seed(0)
    logits, labels = torch.randn(6, 5), torch.tensor([0, 1, 2, 3, 4, 2])
    teacher = torch.softmax(torch.randn(6, 5), dim=1)
    for cfg in (OptimConfig(loss="ce"), OptimConfig(loss="ordinal"), OptimConfig(loss="ordinal", class_weights=True)):
        counts = [30, 10, 10, 5, 2]
        plain = build_loss(cfg, counts)(logits, labels)
        # Weight 0: the teacher changes nothing.
        assert torch.isclose(build_loss(cfg, counts, 0.0)(logits, labels, teacher), plain, atol=1e-6)
        # Weight 1: only the teacher counts; the label only picks each image's grade weight.
        only = build_loss(cfg, counts, 1.0)(logits, labels, teacher)
        per_image = -(teacher * torch.log_softmax(logits, dim=1)).sum(1)
        w = class_weights(counts)[labels] if cfg.class_weights else torch.ones(6)
        assert torch.isclose(only, (per_image * w).sum() / w.sum(), atol=1e-6)
        half = build_loss(cfg, counts, 0.5)(logits, labels, teacher)
        assert torch.isclose(half, (plain + only) / 2, atol=1e-5)
    # A teacher that agrees with the model lowers the loss; one that contradicts it raises it.
    cfg, confident = OptimConfig(loss="ce"), torch.tensor([[4.0, 0, 0, 0, 0]])
    agree, disagree = torch.tensor([[0.9, 0.1, 0, 0, 0]]), torch.tensor([[0, 0, 0, 0.1, 0.9]])
    loss = build_loss(cfg, [1] * 5, 0.5)
    assert loss(confident, torch.tensor([0]), agree) < loss(confident, torch.tensor([0]), disagree)
