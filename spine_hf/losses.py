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


def build_loss(cfg: OptimConfig, train_counts: Sequence[int]) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The training loss for `cfg.loss`, optionally weighted by inverse grade frequency."""
    weights = class_weights(train_counts) if cfg.class_weights else None

    def loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        w = weights.to(logits.device) if weights is not None else None
        if cfg.loss == "ce":
            return F.cross_entropy(logits, labels, weight=w, label_smoothing=cfg.label_smoothing)
        targets = soft_ordinal_targets(labels, cfg.ordinal_scale, logits.shape[1])
        per_image = -(targets * F.log_softmax(logits, dim=1)).sum(dim=1)
        if w is None:
            return per_image.mean()
        sample_w = w[labels]
        return (per_image * sample_w).sum() / sample_w.sum()

    return loss
