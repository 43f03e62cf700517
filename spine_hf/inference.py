"""`Predictor`: a saved model folder or Hub repo id -> grade probabilities for any radiograph file.

The model is loaded once; every input goes through the project's decoder (so 16-bit PNG and DICOM
are read correctly, unlike `pipeline()`'s own loading), is resized exactly as in training and
evaluation, and is scored in batches under `torch.inference_mode`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from spine_hf.grades import GRADE_NAMES
from spine_hf.imaging import decode_image, to_canonical
from spine_hf.model import Preprocessing, native_bf16
from spine_hf.transforms import square_pixels

PRECISIONS = ("fp32", "bf16", "auto")


@dataclass(frozen=True)
class Prediction:
    """One image's result."""

    grade: int
    grade_name: str
    # Probability of each grade, index = grade.
    probabilities: list[float]

    def to_json(self) -> dict:
        return {"grade": self.grade, "grade_name": self.grade_name, "probabilities": self.probabilities}


def resolve_model(model: str | os.PathLike) -> Path:
    """A local folder, or a Hub repo id fetched (or found in the cache with HF_HUB_OFFLINE=1)."""
    path = Path(model)
    if path.is_dir():
        return path
    if path.exists() or str(model).count("/") != 1:
        raise FileNotFoundError(f"{model}: not a model folder and not a Hub repo id (org/name)")
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(repo_id=str(model)))


def read_preprocessing(folder: Path) -> Preprocessing:
    """Input size and normalisation from a saved folder (timm `pretrained_cfg` or a transformers processor)."""
    config = json.loads((folder / "config.json").read_text())
    if "pretrained_cfg" in config:
        cfg = config["pretrained_cfg"]
        return Preprocessing(int(cfg["input_size"][-1]), tuple(cfg["mean"]), tuple(cfg["std"]))
    processor = json.loads((folder / "preprocessor_config.json").read_text())
    size = processor["size"]
    side = size.get("height") or size.get("shortest_edge") if isinstance(size, dict) else size
    return Preprocessing(int(side), tuple(processor["image_mean"]), tuple(processor["image_std"]))


class Predictor:
    """Load a model once, then grade images (paths, bytes, PIL images or arrays) in batches."""

    def __init__(
        self, model: str | os.PathLike, *, device: str | None = None, batch_size: int = 32, precision: str = "fp32"
    ):
        """`precision="bf16"` runs the model under bf16 autocast: faster where bf16 is native (GPUs, CPUs
        with AVX512-BF16/AMX) but the probabilities move slightly (BENCHMARKS.md); "auto" picks bf16
        where it is native, else fp32; the default is fp32, what `evaluate` scores with."""
        from transformers import AutoModelForImageClassification

        self.folder = resolve_model(model)
        self.preprocessing = read_preprocessing(self.folder)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = AutoModelForImageClassification.from_pretrained(str(self.folder), trust_remote_code=False)
        self.model = self.model.to(self.device).eval()
        # channels_last: the layout oneDNN and cuDNN convolutions are fastest in (as in training).
        self.model = self.model.to(memory_format=torch.channels_last)
        labels = [self.model.config.id2label[i] for i in range(self.model.config.num_labels)]
        if labels != list(GRADE_NAMES):
            raise ValueError(f"{model} predicts {labels}, not the five grades {list(GRADE_NAMES)}")
        self.batch_size = batch_size
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
        if precision == "auto":
            precision = "bf16" if native_bf16(self.device) else "fp32"
        self.precision = precision  # what the model computes in: "fp32" or "bf16"
        self._mean = torch.tensor(self.preprocessing.mean).view(1, 3, 1, 1)
        self._std = torch.tensor(self.preprocessing.std).view(1, 3, 1, 1)

    def pixels(self, images: Sequence) -> torch.Tensor:
        """Model input for a batch: decode, resize to the model's square, normalise (N x 3 x S x S)."""
        side = self.preprocessing.size
        squares = np.stack([square_pixels(_canonical(image), side) for image in images])
        batch = torch.from_numpy(squares)[:, None].float().div_(255).expand(-1, 3, -1, -1)
        return ((batch - self._mean) / self._std).contiguous(memory_format=torch.channels_last)

    @torch.inference_mode()
    def logits(self, images: Sequence) -> np.ndarray:
        """Raw model outputs, N x 5."""
        out = [np.zeros((0, len(GRADE_NAMES)), dtype=np.float32)]
        for start in range(0, len(images), self.batch_size):
            batch = self.pixels(images[start : start + self.batch_size]).to(self.device)
            out.append(self._forward(batch).float().cpu().numpy())
        return np.concatenate(out)

    @torch.inference_mode()
    def probabilities(self, images: Sequence, flip_tta: bool = False) -> np.ndarray:
        """Grade probabilities, N x 5; with `flip_tta`, averaged with the horizontally flipped image."""
        out = [np.zeros((0, len(GRADE_NAMES)), dtype=np.float32)]
        for start in range(0, len(images), self.batch_size):
            batch = self.pixels(images[start : start + self.batch_size]).to(self.device)
            probs = torch.softmax(self._forward(batch).float(), dim=1)
            if flip_tta:
                flipped = self._forward(torch.flip(batch, dims=[3])).float()
                probs = (probs + torch.softmax(flipped, dim=1)) / 2
            out.append(probs.cpu().numpy())
        return np.concatenate(out)

    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            return self.model(pixel_values=batch).logits

    def predict(self, images: Iterable, flip_tta: bool = False) -> list[Prediction]:
        """One `Prediction` per image."""
        probabilities = self.probabilities(list(images), flip_tta=flip_tta)
        return [
            Prediction(int(p.argmax()), GRADE_NAMES[int(p.argmax())], [round(float(x), 6) for x in p])
            for p in probabilities
        ]


def _canonical(image) -> Image.Image:
    if isinstance(image, Image.Image | np.ndarray):
        return to_canonical(image)
    return decode_image(image)
