"""The optimiser and the learning-rate schedule of a training run.

AdamW without weight decay on biases and normalisation weights (the fused kernel where it exists),
and a linear warmup followed by a cosine down to a floor, whose length in epochs can change after
the run has started (`train.time_budget_minutes` sets it after the first epoch).
"""

from __future__ import annotations

import math

import torch


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float, device: torch.device):
    """AdamW without decay on biases and norms; the fused kernel (one pass over all parameters) where it exists."""
    fused = device.type in ("cpu", "cuda")
    return torch.optim.AdamW(_param_groups(model, weight_decay), lr=lr, fused=fused)


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on biases and normalisation weights."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (no_decay if param.ndim <= 1 else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class WarmupCosine:
    """The learning-rate factor at a scheduler step: linear warmup, then a cosine down to `min_ratio` at the
    end of `epochs` epochs of `steps_per_epoch` (the numbers of transformers'
    `get_cosine_with_min_lr_schedule_with_warmup`). An object rather than a function so that the epochs
    can change after the first one (`train.time_budget_minutes`) and travel with the scheduler's state."""

    def __init__(self, warmup: int, steps_per_epoch: int, epochs: int, min_ratio: float):
        self.warmup, self.steps_per_epoch, self.epochs, self.min_ratio = warmup, steps_per_epoch, epochs, min_ratio

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return step / max(1, self.warmup)
        total = max(1, self.epochs * self.steps_per_epoch)
        progress = (step - self.warmup) / max(1, total - self.warmup)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)) * (1 - self.min_ratio) + self.min_ratio)
