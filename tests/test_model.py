"""`build_model`: five-grade heads from either library, the library a name belongs to, the precision."""

from __future__ import annotations

import pytest
import torch

from spine_hf.config import ConfigError, ModelConfig
from spine_hf.model import build_model, native_bf16, resolve_precision
from spine_hf.model_folder import resolve_library


def test_names_go_to_the_library_that_knows_them():
    assert resolve_library(ModelConfig(name="resnet18")) == "timm"
    assert resolve_library(ModelConfig(name="timm/convnext_small.fb_in22k_ft_in1k")) == "timm"
    assert resolve_library(ModelConfig(name="google/vit-base-patch16-224")) == "transformers"
    assert resolve_library(ModelConfig(name="resnet18", library="transformers")) == "transformers"


def test_both_libraries_build_a_five_grade_head_with_their_preprocessing():
    timm_model, timm_prep = build_model(ModelConfig(name="test_resnet", image_size=32))
    vit = ModelConfig(name="vit", library="transformers", image_size=32,
                      overrides={"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                                 "intermediate_size": 64, "patch_size": 8})  # fmt: skip
    hf_model, hf_prep = build_model(vit)
    pixels = torch.zeros(2, 3, 32, 32)
    assert timm_model(pixels).shape == hf_model(pixels).shape == (2, 5)
    assert timm_prep.size == hf_prep.size == 32 and hf_prep.mean == (0.5, 0.5, 0.5)
    with pytest.raises(ConfigError, match="not a timm model"):
        build_model(ModelConfig(name="no_such_net_v9", library="timm"))


def test_auto_precision_is_bf16_only_where_it_is_native():
    assert resolve_precision("auto", "cpu") == ("bf16" if native_bf16("cpu") else "fp32")
    assert resolve_precision("fp32", "cpu") == "fp32" and resolve_precision("bf16", "cpu") == "bf16"
