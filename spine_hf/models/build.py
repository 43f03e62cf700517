"""`build_model`: a timm or transformers backbone with a five-grade head, and the precision it computes in.

Radiographs are grayscale; models get the canonical 8-bit image repeated to three channels, so
pretrained RGB weights apply unchanged and `pipeline()` (which always converts to RGB) feeds the
saved model exactly what it saw in training. Both libraries are given the same preprocessing
(`preprocessing.Preprocessing`): the whole image resized to ``image_size`` (one side for a square,
or [height, width] for tall films), bilinear, then the backbone's mean/std. A backbone whose
architecture depends on the input shape (a vision transformer's patch grid) is built at that shape,
its pretrained position embeddings interpolated once, so the saved folder loads at it without any
flag. Which library builds a name is `resolve_library`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace

import torch
from torch import nn

from spine_hf.config import Config, ConfigError, ModelConfig
from spine_hf.data.shapes import CNN_STEP, read_sizes, shape_for, split_sizes, summarise
from spine_hf.grades import GRADE_NAMES, NUM_GRADES
from spine_hf.models.preprocessing import Preprocessing, as_shape, shape_name

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
    height, width = as_shape(cfg.image_size)
    try:
        model = timm.create_model(name, pretrained=cfg.pretrained, num_classes=NUM_GRADES, **kwargs)
        grid = getattr(getattr(model, "patch_embed", None), "img_size", None)
        if grid is not None and tuple(grid) != (height, width) and "img_size" not in kwargs:
            # A vision transformer's patch grid is part of the model: build it at the input shape (timm resamples
            # pretrained position embeddings as it loads them), and timm records img_size in the saved config.
            model = timm.create_model(name, pretrained=cfg.pretrained, num_classes=NUM_GRADES, img_size=(height, width),
                                      **kwargs)  # fmt: skip
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
        "input_size": (3, height, width),
        "crop_pct": 1.0,
        "crop_mode": "squash",
        "interpolation": "bilinear",
        "mean": mean,
        "std": std,
        "label_names": list(GRADE_NAMES),
    }
    return model, Preprocessing((height, width), mean, std)


def _build_transformers(cfg: ModelConfig) -> tuple[nn.Module, Preprocessing]:
    from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageClassification

    labels = {"id2label": dict(enumerate(GRADE_NAMES)), "label2id": {n: i for i, n in enumerate(GRADE_NAMES)}}
    overrides = dict(cfg.overrides)
    shape = as_shape(cfg.image_size)
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
        if "image_size" not in overrides and as_shape(getattr(model.config, "image_size", shape)) != shape:
            if _position_embeddings(model) is not None:
                resize_position_embeddings(model, shape)
            else:  # no learnt positions (a convolutional backbone such as ConvNeXt): any shape, as recorded
                model.config.image_size = _config_size(shape)
    else:
        try:
            config = AutoConfig.for_model(cfg.name, num_labels=NUM_GRADES, **labels, **overrides)
        except ValueError as err:
            raise ConfigError(
                f"model.name {cfg.name!r} is neither a timm model nor a transformers model type; with "
                "pretrained=false give a type such as 'vit', or set pretrained=true for a checkpoint"
            ) from err
        if hasattr(config, "image_size") and "image_size" not in overrides:
            config.image_size = _config_size(shape)
        model = AutoModelForImageClassification.from_config(config)
        mean, std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    expected = getattr(model.config, "image_size", None)
    if expected is not None and as_shape(expected) != shape:
        raise ConfigError(
            f"{cfg.name} is built for {shape_name(as_shape(expected))}-pixel images; set model.image_size to that "
            f"(or model.overrides.image_size when training from scratch)"
        )
    return HFClassifier(model), Preprocessing(shape, mean, std)


def _config_size(shape: tuple[int, int]) -> int | list[int]:
    """How a transformers config records an input shape: one int for a square (as checkpoints do), else [H, W]."""
    return shape[0] if shape[0] == shape[1] else list(shape)


def _position_embeddings(model: nn.Module) -> nn.Parameter | None:
    """The learnt position embeddings of a ViT-style transformers model (1 x (extra + gh * gw) x D), or None."""
    embeddings = getattr(getattr(model, model.base_model_prefix, model), "embeddings", None)
    found = getattr(embeddings, "position_embeddings", None)
    return found if isinstance(found, nn.Parameter) and found.ndim == 3 else None


def resize_position_embeddings(model: nn.Module, shape: tuple[int, int]) -> None:
    """Move a pretrained ViT-style model to input `shape` (height, width), once: its position embeddings
    interpolated (bicubic) from the checkpoint's square patch grid to the new grid, and its config and patch
    embedding set to the shape, so the model saves and loads at the new shape with no extra flag."""
    import torch.nn.functional as F

    config = model.config
    patch = as_shape(config.patch_size)
    old_grid = tuple(s // p for s, p in zip(as_shape(config.image_size), patch, strict=True))
    new_grid = tuple(s // p for s, p in zip(shape, patch, strict=True))
    if any(s % p for s, p in zip(shape, patch, strict=True)):
        raise ConfigError(f"model.image_size {shape_name(shape)} is not a multiple of the patch size {patch}")
    table = _position_embeddings(model)
    extra = table.shape[1] - old_grid[0] * old_grid[1]  # the class (and distillation/register) tokens in front
    grid = table[:, extra:].reshape(1, *old_grid, -1).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=new_grid, mode="bicubic", align_corners=False)
    moved = torch.cat([table[:, :extra].float(), grid.permute(0, 2, 3, 1).reshape(1, -1, table.shape[-1])], dim=1)
    embeddings = getattr(model, model.base_model_prefix).embeddings
    embeddings.position_embeddings = nn.Parameter(moved.to(table.dtype))
    config.image_size = _config_size(shape)
    # The modules keep their own copies of the shape, which their forward checks the input against.
    for module in (embeddings, getattr(embeddings, "patch_embeddings", None)):
        if hasattr(module, "image_size"):
            module.image_size = tuple(shape)
        if hasattr(module, "num_patches"):
            module.num_patches = new_grid[0] * new_grid[1]
    logger.info("position embeddings interpolated from a %s to a %s patch grid", old_grid, new_grid)


def fixed_input_size(model: nn.Module) -> bool:
    """Whether a built model takes only its own input size: a transformers model with learnt position embeddings,
    or a timm vision transformer whose patch embedding checks the size; a CNN takes any."""
    if isinstance(model, HFClassifier):
        return _position_embeddings(model.hf_model) is not None
    return bool(getattr(getattr(model, "patch_embed", None), "strict_img_size", False))


def input_stride(model_cfg: ModelConfig) -> int:
    """What each side of the input should be a multiple of: a vision transformer's patch size, else `CNN_STEP`.
    Reads the backbone's config, or builds it on the meta device (no weights, no memory)."""
    if resolve_library(model_cfg) == "transformers":
        from transformers import AutoConfig

        kwargs = dict(model_cfg.overrides)
        if model_cfg.pretrained:
            config = AutoConfig.from_pretrained(model_cfg.name, trust_remote_code=False, **kwargs)
        else:
            config = AutoConfig.for_model(model_cfg.name, **kwargs)
        patch = getattr(config, "patch_size", None)
        if patch is None or hasattr(config, "hidden_sizes"):  # ConvNeXt and the like: a CNN
            return CNN_STEP
        return int(patch[0] if isinstance(patch, list | tuple) else patch)
    import timm

    name = model_cfg.name.removeprefix("hf-hub:").removeprefix("timm/")
    with torch.device("meta"):
        model = timm.create_model(name.split("/")[-1], pretrained=False, **model_cfg.overrides)
    patch = getattr(getattr(model, "patch_embed", None), "patch_size", None)
    if patch is not None:
        return int(patch[0] if isinstance(patch, list | tuple) else patch)
    return CNN_STEP


def resolve_shape(cfg: Config, dataset, dataset_folder: str | os.PathLike) -> Config:
    """`cfg` with model.image_size as [height, width] and model.aspect "fixed" when it asks for the data's aspect
    (model.aspect "data"): the median height:width of data.train_split (from ``image_sizes.json``, or the image
    headers of a dataset converted before it was recorded) at about image_size^2 pixels (`shape_for`). Other
    configs as given."""
    if cfg.model.aspect != "data":
        return cfg
    split = cfg.data.train_split
    recorded = (read_sizes(dataset_folder) or {}).get(split)
    summary = recorded or summarise(split_sizes(dataset[split]))
    aspect, stride = summary["aspect"]["median"], input_stride(cfg.model)
    shape = shape_for(int(cfg.model.image_size), aspect, stride)
    logger.info(
        "model.aspect=data: the %s split's median height:width is %.2f; %d^2 pixels in that aspect, sides multiples "
        "of %d: model.image_size=[%d, %d]", split, aspect, cfg.model.image_size, stride, *shape,
    )  # fmt: skip
    return replace(cfg, model=replace(cfg.model, image_size=list(shape), aspect="fixed"))
