"""`build_model`: a timm or transformers backbone with a five-grade head, and the precision it computes in.

Radiographs are grayscale; models get the canonical 8-bit image repeated to three channels, so
pretrained RGB weights apply unchanged and `pipeline()` (which always converts to RGB) feeds the
saved model exactly what it saw in training. Both libraries are given the same preprocessing
(`preprocessing.Preprocessing`): the whole image squashed to ``image_size x image_size``,
bilinear, then the backbone's mean/std. Which library builds a name is `resolve_library`.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from spine_hf.config import ConfigError, ModelConfig
from spine_hf.grades import GRADE_NAMES, NUM_GRADES
from spine_hf.preprocessing import Preprocessing

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class HFClassifier(nn.Module):
    """A transformers image classifier that takes a pixel tensor and returns logits, like timm."""

    def __init__(self, hf_model: nn.Module):
        super().__init__()
        self.hf_model = hf_model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.hf_model(pixel_values=pixel_values).logits


def native_bf16(device: torch.device | str) -> bool:
    """Whether `device` computes bf16 natively (a CUDA GPU with bf16, a CPU with AVX512-BF16 or AMX),
    so that bf16 autocast is faster than fp32 there rather than emulated."""
    if torch.device(device).type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """What to compute in: "auto" becomes "bf16" where `device` computes bf16 natively, else "fp32"
    (on an AVX2-only CPU bf16 is emulated and several times slower); other values stay as they are."""
    if precision != "auto":
        return precision
    return "bf16" if native_bf16(device) else "fp32"


def resolve_library(cfg: ModelConfig) -> str:
    """ "timm" or "transformers": the library that builds `cfg.name` (timm whenever timm knows the name)."""
    if cfg.library != "auto":
        return cfg.library
    import timm

    name = cfg.name.removeprefix("hf-hub:")
    if name.startswith("timm/") or timm.is_model(name.split(".")[0]):
        return "timm"
    return "transformers"


def build_model(cfg: ModelConfig) -> tuple[nn.Module, Preprocessing]:
    """Create the backbone with a `NUM_GRADES` head; returns the module and its preprocessing."""
    if resolve_library(cfg) == "timm":
        return _build_timm(cfg)
    return _build_transformers(cfg)


def _build_timm(cfg: ModelConfig) -> tuple[nn.Module, Preprocessing]:
    import timm

    name = cfg.name if cfg.name.startswith(("hf-hub:", "local-dir:")) or "/" not in cfg.name else f"hf-hub:{cfg.name}"
    kwargs = dict(cfg.overrides)
    kwargs.setdefault("drop_rate", cfg.drop_rate)
    if cfg.drop_path_rate:
        kwargs.setdefault("drop_path_rate", cfg.drop_path_rate)
    try:
        model = timm.create_model(name, pretrained=cfg.pretrained, num_classes=NUM_GRADES, **kwargs)
    except RuntimeError as err:
        if "Unknown model" in str(err):
            raise ConfigError(f"model.name {cfg.name!r} is not a timm model; check timm.list_models()") from err
        raise
    data = timm.data.resolve_data_config({}, model=model)
    mean, std = tuple(data["mean"]), tuple(data["std"])
    if not cfg.pretrained:
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    model.pretrained_cfg = {
        **model.pretrained_cfg,
        "input_size": (3, cfg.image_size, cfg.image_size),
        "crop_pct": 1.0,
        "crop_mode": "squash",
        "interpolation": "bilinear",
        "mean": mean,
        "std": std,
        "label_names": list(GRADE_NAMES),
    }
    return model, Preprocessing(cfg.image_size, mean, std)


def _build_transformers(cfg: ModelConfig) -> tuple[nn.Module, Preprocessing]:
    from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageClassification

    labels = {"id2label": dict(enumerate(GRADE_NAMES)), "label2id": {n: i for i, n in enumerate(GRADE_NAMES)}}
    overrides = dict(cfg.overrides)
    if cfg.drop_rate:
        overrides.setdefault("hidden_dropout_prob", cfg.drop_rate)
    if cfg.pretrained:
        # Never run code from a checkpoint's repo: trust_remote_code stays off.
        config = AutoConfig.from_pretrained(
            cfg.name, num_labels=NUM_GRADES, trust_remote_code=False, **labels, **overrides
        )
        model = AutoModelForImageClassification.from_pretrained(
            cfg.name, config=config, ignore_mismatched_sizes=True, trust_remote_code=False
        )
        try:
            processor = AutoImageProcessor.from_pretrained(cfg.name, trust_remote_code=False)
            mean, std = tuple(processor.image_mean), tuple(processor.image_std)
        except (OSError, ValueError, AttributeError):
            mean, std = IMAGENET_MEAN, IMAGENET_STD
    else:
        try:
            config = AutoConfig.for_model(cfg.name, num_labels=NUM_GRADES, **labels, **overrides)
        except ValueError as err:
            raise ConfigError(
                f"model.name {cfg.name!r} is neither a timm model nor a transformers model type; with "
                "pretrained=false give a type such as 'vit', or set pretrained=true for a checkpoint"
            ) from err
        if hasattr(config, "image_size") and "image_size" not in overrides:
            config.image_size = cfg.image_size
        model = AutoModelForImageClassification.from_config(config)
        mean, std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    expected = getattr(model.config, "image_size", cfg.image_size)
    if isinstance(expected, int) and expected != cfg.image_size:
        raise ConfigError(
            f"{cfg.name} is built for {expected}-pixel images; set model.image_size={expected} "
            f"(or model.overrides.image_size when training from scratch)"
        )
    return HFClassifier(model), Preprocessing(cfg.image_size, mean, std)
