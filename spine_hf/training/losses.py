"""Losses that keep the model's output a plain five-way logit vector (so `pipeline()` gives grade
probabilities) while telling it that grades are ordered.

"ordinal" trains against soft ordinal labels (Diaz & Marathe, CVPR 2019): the target for an image
of grade ``g`` gives grade ``k`` a probability proportional to ``exp(-scale * (k - g)^2)``, so
predicting a neighbour costs less than predicting a distant grade. "ce" is plain cross-entropy.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from spine_hf.config import OptimConfig
from spine_hf.grades import NUM_GRADES


def soft_ordinal_targets(labels: torch.Tensor, scale: float, num_classes: int = NUM_GRADES) -> torch.Tensor:
    """Rows of target probabilities, peaked at each label and falling off with squared distance."""
    grades = torch.arange(num_classes, device=labels.device, dtype=torch.float32)
    distance = (grades[None, :] - labels[:, None].float()) ** 2
    return torch.softmax(-scale * distance, dim=1)


def class_weights(counts: Sequence[int]) -> torch.Tensor:
    """Inverse-frequency weights, normalised so that a balanced set gets weight 1 everywhere."""
    counts_t = torch.tensor(counts, dtype=torch.float32).clamp(min=1)
    return counts_t.sum() / (len(counts) * counts_t)


def build_loss(
    cfg: OptimConfig, train_counts: Sequence[int], teacher_weight: float = 0.0
) -> Callable[..., torch.Tensor]:
    """The training loss for `cfg.loss`, optionally weighted by inverse grade frequency.

    The loss is called as ``loss(logits, labels)``, or ``loss(logits, labels, teacher)`` when a run learns
    from a teacher's grade probabilities (N x 5; a fold ensemble's, `cross_validation`): then each image's
    loss is ``(1 - teacher_weight)`` times its loss against its label plus ``teacher_weight`` times the
    cross-entropy against the teacher's probabilities (knowledge distillation, Hinton et al. 2015, at
    temperature 1), weighted by the label's grade as without a teacher."""
    weights = class_weights(train_counts) if cfg.class_weights else None
    if not 0.0 <= teacher_weight <= 1.0:
        raise ValueError(f"teacher_weight must be in 0..1, not {teacher_weight}")

    def per_label(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Each image's loss against its label, unweighted."""
        if cfg.loss == "ce":
            return F.cross_entropy(logits, labels, reduction="none", label_smoothing=cfg.label_smoothing)
        targets = soft_ordinal_targets(labels, cfg.ordinal_scale, logits.shape[1])
        return -(targets * F.log_softmax(logits, dim=1)).sum(dim=1)

    def loss(logits: torch.Tensor, labels: torch.Tensor, teacher: torch.Tensor | None = None) -> torch.Tensor:
        logits = logits.float()
        w = weights.to(logits.device) if weights is not None else None
        if cfg.loss == "ce" and teacher is None:
            return F.cross_entropy(logits, labels, weight=w, label_smoothing=cfg.label_smoothing)
        per_image = per_label(logits, labels)
        if teacher is not None:
            from_teacher = -(teacher.float() * F.log_softmax(logits, dim=1)).sum(dim=1)
            per_image = (1 - teacher_weight) * per_image + teacher_weight * from_teacher
        if w is None:
            return per_image.mean()
        sample_w = w[labels]
        return (per_image * sample_w).sum() / sample_w.sum()

    return loss
