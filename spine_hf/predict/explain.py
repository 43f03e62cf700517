"""Grad-CAM: where the model looked, for CNN (timm) and ViT (transformers) backbones alike.

The class score is differentiated with respect to the last feature map: for a timm model the output
of `forward_features` (B x C x H x W, or tokens for timm ViTs), for a transformers ViT the last
hidden state's patch tokens laid back on their grid. Channels are weighted by their mean gradient,
summed, rectified and scaled to 0..1, then resized to the image.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image

from spine_hf.predict.inference import Predictor


def grad_cam(predictor: Predictor, image, grade: int | None = None) -> tuple[np.ndarray, int]:
    """Heat map (H x W floats in 0..1, at the canonical image's size) for `grade` (default: predicted)."""
    canonical = predictor.canonical(image)
    if predictor.model is None:
        raise ValueError(f"{predictor.folder.path}: Grad-CAM needs the PyTorch weights; this folder is an ONNX "
                         "export (model.onnx only): explain with the folder it was exported from")  # fmt: skip
    pixels = torch.from_numpy(predictor.pixels([canonical])).to(predictor.device)
    with torch.enable_grad():
        features, logits = _features_and_logits(predictor, pixels)
        grade = int(logits.argmax(1)) if grade is None else grade
        (gradient,) = torch.autograd.grad(logits[0, grade], features)
    shape = pixels.shape[2:]
    maps, grads = _as_grid(features.detach()[0], shape), _as_grid(gradient[0], shape)
    weights = grads.mean(dim=(1, 2), keepdim=True)
    cam = torch.relu((weights * maps).sum(0)).float().cpu().numpy()
    cam = cam / cam.max() if cam.max() > 0 else cam
    heat = Image.fromarray(np.uint8(np.round(cam * 255))).resize(canonical.size, Image.Resampling.BILINEAR)
    return np.asarray(heat, dtype=np.float32) / 255.0, grade


def overlay(image, heat: np.ndarray, alpha: float = 0.45) -> Image.Image:
    """The canonical image in gray with the heat map on top (blue low, red high)."""
    gray = np.asarray(Predictor.canonical(image), dtype=np.float32) / 255.0
    red = np.clip(1.5 - np.abs(4 * heat - 3), 0, 1)
    green = np.clip(1.5 - np.abs(4 * heat - 2), 0, 1)
    blue = np.clip(1.5 - np.abs(4 * heat - 1), 0, 1)
    colour = np.stack([red, green, blue], axis=-1)
    strength = alpha * heat[..., None]
    mixed = gray[..., None] * (1 - strength) + colour * strength
    return Image.fromarray(np.uint8(np.round(np.clip(mixed, 0, 1) * 255)))


def _features_and_logits(predictor: Predictor, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if predictor.folder.library == "timm":  # the timm model itself
        features = predictor.model.forward_features(pixels)
        return features, predictor.model.forward_head(features)
    outputs = predictor.model.hf_model(pixel_values=pixels, output_hidden_states=True)
    return outputs.hidden_states[-1], outputs.logits


def _as_grid(tensor: torch.Tensor, shape) -> torch.Tensor:
    """C x h x w from a CNN map, or from ViT tokens (N x D, with class/register tokens in front) laid on the patch
    grid of an input of `shape` (height, width): the rows x columns grid with the input's aspect that the last
    tokens fill."""
    if tensor.ndim == 3:
        return tensor
    tokens = tensor.shape[0]
    height, width = shape
    for extra in range(min(tokens, 16)):  # the tokens in front: class, distillation, registers
        rows = math.isqrt((tokens - extra) * height // width)
        columns = (tokens - extra) // max(rows, 1)
        if rows and rows * columns == tokens - extra and rows * width == columns * height:
            return tensor[extra:].T.reshape(-1, rows, columns)
    raise ValueError(f"{tokens} tokens do not form a patch grid with the aspect of a {height} x {width} input")
