"""Grad-CAM for a timm CNN and a transformers ViT: a map over the whole image, for the grade asked."""

from __future__ import annotations

import numpy as np
import torch

from spine_hf.config import Config, ModelConfig
from spine_hf.data.imaging import decode_image
from spine_hf.models.build import build_model
from spine_hf.models.folder import save_for_hub
from spine_hf.predict.explain import grad_cam, overlay
from spine_hf.predict.inference import Predictor


def _check(predictor: Predictor, image_path) -> None:
    heat, grade = grad_cam(predictor, image_path)
    canonical = decode_image(image_path)
    assert heat.shape == (canonical.height, canonical.width) and heat.min() >= 0 and heat.max() <= 1
    assert grade == predictor.predict([canonical])[0].grade  # by default: the predicted grade
    shown = overlay(image_path, heat)
    assert shown.size == canonical.size and shown.mode == "RGB"
    other = (grade + 2) % 5
    assert grad_cam(predictor, canonical, other)[1] == other


def test_grad_cam_for_a_timm_cnn(trained_model, phantom_split):
    image = next((phantom_split / "test").rglob("*.png"))
    _check(Predictor(trained_model), image)
    heat, _ = grad_cam(Predictor(trained_model), image)
    assert heat.max() == 1.0 and np.ptp(heat) > 0.5  # a map, not a constant


def test_grad_cam_for_a_transformers_vit(tmp_path, phantom_split):
    torch.manual_seed(0)
    overrides = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
                 "patch_size": 8}  # fmt: skip
    cfg = Config(model=ModelConfig(name="vit", library="transformers", image_size=32, overrides=overrides))
    model, preprocessing = build_model(cfg.model)
    folder = save_for_hub(model, cfg, preprocessing, tmp_path / "vit")
    _check(Predictor(folder), next((phantom_split / "test").rglob("*.png")))
