"""The model card: Hub front matter that parses, the disclaimer, results and loading snippets."""

from __future__ import annotations

import yaml

from spine_hf.config import Config, ModelConfig
from spine_hf.models.card import DISCLAIMER, model_card


def _front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def test_the_card_has_front_matter_results_and_the_disclaimer():
    cfg = Config(model=ModelConfig(name="timm/resnet18.a1_in1k", pretrained=True))
    card = model_card(cfg, {"epoch": 3, "validation": {"qwk": 0.71234, "accuracy": 0.6}}, "timm")
    front = _front_matter(card)
    assert front["library_name"] == "timm" and front["pipeline_tag"] == "image-classification"
    assert front["base_model"] == "timm/resnet18.a1_in1k"
    metrics = {m["type"]: m["value"] for m in front["model-index"][0]["results"][0]["metrics"]}
    assert metrics == {"qwk": 0.7123, "accuracy": 0.6}
    assert DISCLAIMER in card and "| Quadratic weighted kappa | 0.7123 |" in card and "epoch 3" in card
    assert 'timm.create_model("hf-hub:REPO", pretrained=True)' in card


def test_a_transformers_card_without_results_says_so():
    card = model_card(Config(model=ModelConfig(name="vit", library="transformers")), None, "transformers")
    front = _front_matter(card)
    assert front["library_name"] == "transformers" and "base_model" not in front
    assert "(not evaluated)" in card and "timm.create_model" not in card
