"""Dataset rows -> model-ready tensors, fast enough that the model sets the pace.

Each image is decoded once with the project's decoder and resized with PIL (bilinear) to a square:
to ``image_size`` for evaluation (exactly what `pipeline()` does with the saved model) and a little
larger for training, where random crops cut it down. The squares are kept as one uint8 tensor in
memory when they fit `data.cache_gb`; otherwise each image is decoded when it is needed.

Augmentation is what a radiograph allows: a random crop of most of the image, a small rotation,
brightness and contrast (intensity only: there is no colour to jitter), and a horizontal flip that
can be turned off where laterality matters.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler
from torchvision.transforms import v2

from spine_hf.config import DataConfig
from spine_hf.imaging import ImageDecodeError, decode_image, display_path
from spine_hf.model import Preprocessing

# Training squares are this much larger than the model input, so that crops have room.
TRAIN_MARGIN = 1.15


def square_pixels(image: Image.Image, side: int) -> np.ndarray:
    """A canonical image squashed to ``side x side`` (uint8): the one resize of training and inference."""
    return np.array(image.resize((side, side), Image.Resampling.BILINEAR))  # a writable copy


def load_square(data: bytes | None, path: str | None, side: int) -> np.ndarray:
    """Decode an image the project's way and squash it to ``side x side`` (uint8)."""
    return square_pixels(decode_image(data if data is not None else path), side)


class GradeImages(Dataset):
    """(pixel tensor 3 x S x S, grade) pairs from one split of a converted dataset."""

    def __init__(self, split, preprocessing: Preprocessing, cfg: DataConfig, train: bool):
        from datasets import Image as ImageFeature

        if cfg.max_samples:
            split = split.select(range(min(cfg.max_samples, len(split))))
        self.labels = [int(v) for v in split["label"]]
        self.rows = split.cast_column("image", ImageFeature(decode=False))
        self.train = train
        self.side = round(preprocessing.size * TRAIN_MARGIN) if train else preprocessing.size
        self.mean = torch.tensor(preprocessing.mean).view(3, 1, 1)
        self.std = torch.tensor(preprocessing.std).view(3, 1, 1)
        self.cache = self._fill_cache() if len(self) * self.side**2 <= cfg.cache_gb * 1e9 else None
        steps = []
        if train:
            steps += [
                v2.RandomRotation(cfg.rotate) if cfg.rotate else v2.Identity(),
                v2.RandomResizedCrop(preprocessing.size, scale=(cfg.min_scale, 1.0), ratio=(0.8, 1.25), antialias=True),
                v2.RandomHorizontalFlip() if cfg.hflip else v2.Identity(),
                v2.ColorJitter(brightness=cfg.intensity, contrast=cfg.intensity) if cfg.intensity else v2.Identity(),
            ]
        self.augment = v2.Compose(steps) if steps else None

    def __len__(self) -> int:
        return len(self.labels)

    def _square(self, index: int) -> np.ndarray:
        cell = self.rows[index]["image"]
        try:
            return load_square(cell.get("bytes"), cell.get("path"), self.side)
        except ImageDecodeError as err:
            raise ValueError(
                f"row {index} ({display_path(cell.get('path') or 'embedded image')}) of this dataset cannot be "
                f"decoded: {err.problem}. Rebuild the dataset with `spine-hf data convert`, which checks every image"
            ) from err

    def _fill_cache(self) -> torch.Tensor:
        cache = torch.empty((len(self), 1, self.side, self.side), dtype=torch.uint8)

        def fill(index: int) -> str | None:
            try:
                cache[index, 0] = torch.from_numpy(self._square(index))
            except ValueError as err:
                return str(err)
            return None

        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            failures = [message for message in pool.map(fill, range(len(self))) if message]
        if failures:  # all of them at once, not one per attempt
            more = f"\n  ... and {len(failures) - 20} more" if len(failures) > 20 else ""
            raise ValueError(f"{len(failures)} images cannot be used:\n  " + "\n  ".join(failures[:20]) + more)
        return cache

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.cache[index] if self.cache is not None else torch.from_numpy(self._square(index))[None]
        if self.augment is not None:
            image = self.augment(image)
        pixels = image.float().div_(255).expand(3, -1, -1)
        return (pixels - self.mean) / self.std, self.labels[index]


def grade_counts(labels: Sequence[int], num_classes: int = 5) -> list[int]:
    return np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes).tolist()


def make_loader(dataset: GradeImages, batch_size: int, cfg: DataConfig, shuffle: bool, seed: int) -> DataLoader:
    """A DataLoader; with data.sampler=balanced every grade is drawn equally often."""
    sampler = None
    if shuffle and cfg.sampler == "balanced":
        counts = np.maximum(grade_counts(dataset.labels), 1)
        weights = torch.tensor([1.0 / counts[label] for label in dataset.labels], dtype=torch.double)
        sampler = WeightedRandomSampler(
            weights, len(dataset), replacement=True, generator=torch.Generator().manual_seed(seed)
        )
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle and sampler is None,
        sampler=sampler,
        num_workers=cfg.num_workers,
        persistent_workers=cfg.num_workers > 0,
        pin_memory=torch.cuda.is_available(),
        drop_last=False,
    )
