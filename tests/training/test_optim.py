"""The optimiser's parameter groups and the warmup + cosine schedule."""

from __future__ import annotations

import pytest
import torch

from spine_hf.training.optim import WarmupCosine, make_optimizer


def test_the_schedule_is_transformers_warmup_cosine_and_its_length_can_change():
    from transformers import get_cosine_with_min_lr_schedule_with_warmup

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.003)
    reference = get_cosine_with_min_lr_schedule_with_warmup(optimizer, 17, 10 * 40, min_lr_rate=0.01).lr_lambdas[0]
    ours = WarmupCosine(17, 40, 10, 0.01)
    for step in (0, 1, 16, 17, 18, 100, 399, 400, 401):
        assert ours(step) == pytest.approx(reference(step), rel=1e-12, abs=1e-15), step
    ours.epochs = 4  # a time budget shortened the run: the cosine now ends at step 160
    assert ours(160) == pytest.approx(0.01) and ours(100) < reference(100)


def test_biases_and_norms_get_no_weight_decay():
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4))
    groups = make_optimizer(model, 1e-3, 0.05, torch.device("cpu")).param_groups
    assert [len(g["params"]) for g in groups] == [1, 3] and [g["weight_decay"] for g in groups] == [0.05, 0.0]
    assert groups[0]["params"][0] is model[0].weight
