"""Dataset rows -> model-ready tensors, fast enough that the model sets the pace.

Each image is decoded once per split and side, with the project's decoder, into the decoded cache
(`decoded_cache`): uint8 images of ``image_size`` (height x width) for evaluation (exactly what `pipeline()` does
with the saved model) and a little larger for training, where random crops cut them down. Every
process maps that one file, so the loader only copies squares out of it and ships uint8 batches
(a quarter of the bytes of float32; pinned on CUDA) to the device.

Augmentation is what a radiograph allows: a random crop of most of the image, a small rotation,
brightness and contrast (intensity only: there is no colour to jitter), and a horizontal flip that
can be turned off where laterality matters. It runs on the training device, after the transfer
(`BatchAugment`): each image gets its own random crop, rotation and flip, but all of them are one
affine sampling grid + `grid_sample` over the batch, so even on a small CPU it costs a few percent
of a training step (per-image torchvision transforms cost about a tenth), and on a GPU next to nothing.
With progressive resizing (`data.progressive_scale`) the early epochs sample smaller crops from the
same images, both sides scaled alike (`train_shape`), so they cost a fraction of the later ones. A
tall input (spine films) keeps its aspect through every step: the crops' aspect is drawn around the
target's and rotations are rotations in pixels, not in the stretched -1..1 grid.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler

from spine_hf.config import DataConfig
from spine_hf.grades import NUM_GRADES
from spine_hf.models.preprocessing import Preprocessing, Shape, as_shape
from spine_hf.training.decoded_cache import default_cache_folder, open_decoded

# Training squares are this much larger than the model input, so that crops have room.
TRAIN_MARGIN = 1.15
# Progressive resizing: training sides are multiples of this.
SIDE_STEP = 16


class GradeImages(Dataset):
    """(uint8 image 1 x H x W, grade) pairs from one split of a converted dataset, read from the decoded cache.

    Building one decodes the split into the cache unless a valid cache is there already; in several
    processes, build it in one first (`accelerator.local_main_process_first()`) and the others map it.
    """

    def __init__(self, split, preprocessing: Preprocessing, cfg: DataConfig, train: bool):
        if cfg.max_samples:
            split = split.select(range(min(cfg.max_samples, len(split))))
        self.labels = [int(v) for v in split["label"]]
        self.train = train
        self.preprocessing = preprocessing
        self.shape = tuple(round(side * TRAIN_MARGIN) for side in preprocessing.size) if train else preprocessing.size
        cache = open_decoded(split, self.shape, cfg.cache_dir or default_cache_folder(split))
        self.cache_path, self._squares = cache.path, cache.squares
        # Images this object decoded (0 when it mapped an existing cache), and how long that took.
        self.decoded, self.decode_seconds = cache.decoded, cache.seconds

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if self._squares is None:  # in a DataLoader worker that was handed a pickled copy
            self._squares = np.load(self.cache_path, mmap_mode="r")
        return torch.from_numpy(np.array(self._squares[index]))[None], self.labels[index]

    def __getstate__(self) -> dict:
        # Worker processes map the file themselves; a pickled memory map would copy the whole cache.
        return {**self.__dict__, "_squares": None}


class PooledImages(Dataset):
    """Chosen rows of several splits as one dataset (a cross-validation fold's training or held-out rows):
    each split's `GradeImages`, so its squares come from the split's one decoded cache, shared by every fold."""

    def __init__(self, parts: dict[str, GradeImages], rows: Sequence[tuple[str, int]], teacher=None):
        self.parts, self.rows = parts, list(rows)
        self.labels = [parts[split].labels[index] for split, index in self.rows]
        self.decoded = sum(part.decoded for part in parts.values())
        # A teacher's grade probabilities for each row (N x 5), shipped with its image and grade; None without.
        self.teacher = None
        if teacher is not None:
            self.teacher = torch.as_tensor(np.asarray(teacher, dtype=np.float32))
            if self.teacher.shape != (len(self.rows), NUM_GRADES):
                raise ValueError(f"teacher probabilities: {tuple(self.teacher.shape)} for {len(self.rows)} images")

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> tuple:
        split, row = self.rows[index]
        found = self.parts[split][row]
        return found if self.teacher is None else (*found, self.teacher[index])


def pooled_images(dataset, rows: Sequence[tuple[str, int]], preprocessing: Preprocessing, cfg: DataConfig,
                  train: bool, teacher=None) -> PooledImages:  # fmt: skip
    """`rows` ((split, row index) pairs) of a converted dataset, read from each split's decoded cache; with
    `teacher` (N x 5 grade probabilities, one row per entry of `rows`), each item carries its row too."""
    if cfg.max_samples:
        raise ValueError("data.max_samples cuts splits short, which would break the folds' row numbers; leave it 0")
    splits = sorted({split for split, _ in rows})
    parts = {split: GradeImages(dataset[split], preprocessing, cfg, train) for split in splits}
    return PooledImages(parts, rows, teacher)


def collate_squares(rows: Sequence[tuple]) -> tuple[torch.Tensor, ...]:
    """A batch of uint8 images (B x 1 x H x W) and their grades, plus the teacher's probabilities (B x 5) when
    the items carry them: what the loader ships to the device."""
    batch = torch.stack([row[0] for row in rows]), torch.tensor([row[1] for row in rows], dtype=torch.long)
    if len(rows[0]) > 2:
        batch += (torch.stack([row[2] for row in rows]),)
    return batch


class BatchAugment:
    """Augment and normalise a batch of uint8 images where it lies (B x 1 x H' x W' -> B x 3 x H x W, `size`).

    Per image: a crop of `min_scale`..1 of the area with aspect 0.8..1.25 times the image's own (as
    RandomResizedCrop; the input and `size` have the same aspect, so a crop keeps the target's within that),
    a rotation of up to `rotate` degrees (`full_side_min_scale` and `full_side_rotate`, when set, once
    `size` is the model's input size; a rotation of the pixels, also on a tall grid), a horizontal flip
    (when `hflip`), then brightness and contrast factors in 1 +- `intensity` (as ColorJitter). The crop,
    rotation and flip of every image are one affine map, applied to the whole batch by a single bilinear
    `grid_sample` (zeros outside the image, like a rotated radiograph's corners). The random numbers are
    drawn on the CPU from torch's global generator, whose state accelerate checkpoints, so a resumed run
    draws the same augmentations
    on any device; only the sampling runs on the batch's device.
    """

    def __init__(self, cfg: DataConfig, preprocessing: Preprocessing):
        self.cfg = cfg
        self.preprocessing = preprocessing
        self.size = preprocessing.size

    @property
    def size(self) -> Shape:
        """(height, width) of the images it makes: the model's input, or less in progressive resizing's early epochs."""
        return self._size

    @size.setter
    def size(self, size: int | Shape) -> None:
        self._size = as_shape(size)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        device = images.device
        images = images.float().div_(255)  # B x 1 x H' x W'
        count, cfg = len(images), self.cfg
        # -1..1 spans both sides: a rotation in pixels is one in these coordinates only after scaling y by
        # height / width (tall) or x by its inverse.
        tall = images.shape[2] / images.shape[3]
        width, height = self._crop_sizes(count)
        # Centre anywhere that keeps the crop inside the square (normalised coordinates, -1..1).
        centre_x = (1 - width) * torch.empty(count).uniform_(-1, 1)
        centre_y = (1 - height) * torch.empty(count).uniform_(-1, 1)
        rotate = self.rotate
        angle = torch.empty(count).uniform_(-rotate, rotate) * (math.pi / 180)
        flip = torch.where(torch.rand(count) < 0.5, -1.0, 1.0) if cfg.hflip else torch.ones(count)
        cos, sin = torch.cos(angle), torch.sin(angle)
        # input = R(angle) . (diag(width * flip, height) . output + centre), where R rotates in pixels:
        # [[cos, -sin * tall], [sin / tall, cos]] in normalised coordinates.
        sx, sy = width * flip, height
        theta = torch.stack(
            [
                torch.stack([cos * sx, -sin * tall * sy, cos * centre_x - sin * tall * centre_y], dim=1),
                torch.stack([sin / tall * sx, cos * sy, sin / tall * centre_x + cos * centre_y], dim=1),
            ],
            dim=1,
        )
        grid = self._grid(theta.to(device))
        out = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        if cfg.intensity:
            low, high = 1 - cfg.intensity, 1 + cfg.intensity
            brightness = torch.empty(count, 1, 1, 1).uniform_(low, high).to(device)
            contrast = torch.empty(count, 1, 1, 1).uniform_(low, high).to(device)
            out = (out * brightness).clamp_(0, 1)
            grey = out.mean(dim=(1, 2, 3), keepdim=True)
            out = ((out - grey) * contrast + grey).clamp_(0, 1)
        return self.preprocessing.normalise(out)

    def _grid(self, theta: torch.Tensor) -> torch.Tensor:
        """`F.affine_grid(theta, [B, 1, H, W], align_corners=False)` as two broadcast multiply-adds:
        the same sampling points, 3.8 ms instead of 16.5 ms for 32 squares of 224 px on this CPU."""
        height, width = self.size

        def centres(count: int) -> torch.Tensor:
            return (torch.arange(count, dtype=torch.float32, device=theta.device) * 2 + 1) / count - 1

        xs, ys, t = centres(width).view(1, 1, -1), centres(height).view(1, -1, 1), theta.view(-1, 2, 3, 1, 1)
        x = t[:, 0, 0] * xs + t[:, 0, 1] * ys + t[:, 0, 2]
        y = t[:, 1, 0] * xs + t[:, 1, 1] * ys + t[:, 1, 2]
        return torch.stack([x, y], dim=-1)

    @property
    def at_full_side(self) -> bool:
        """Whether the current side is the model's input size (where the data.full_side_* settings apply)."""
        return self.size[0] >= self.preprocessing.size[0] and self.size[1] >= self.preprocessing.size[1]

    @property
    def min_scale(self) -> float:
        """The smallest crop area at the current side: data.full_side_min_scale at full side, if set."""
        full = self.at_full_side and self.cfg.full_side_min_scale
        return self.cfg.full_side_min_scale if full else self.cfg.min_scale

    @property
    def rotate(self) -> float:
        """The largest rotation at the current side: data.full_side_rotate at full side, if set (>= 0)."""
        full = self.at_full_side and self.cfg.full_side_rotate >= 0
        return self.cfg.full_side_rotate if full else self.cfg.rotate

    def _crop_sizes(self, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Crop width and height as fractions of the side, drawn as RandomResizedCrop draws them: area
        fraction and log-uniform aspect, redrawn up to 10 times until the crop fits, else the whole image."""
        width, height = torch.ones(count), torch.ones(count)
        pending, min_scale = torch.ones(count, dtype=torch.bool), self.min_scale
        for _ in range(10):
            area = torch.empty(count).uniform_(min_scale, 1.0)
            aspect = torch.exp(torch.empty(count).uniform_(math.log(0.8), math.log(1.25)))
            w, h = torch.sqrt(area * aspect), torch.sqrt(area / aspect)
            fits = pending & (w <= 1) & (h <= 1)
            width, height = torch.where(fits, w, width), torch.where(fits, h, height)
            pending &= ~fits
            if not pending.any():
                break
        return width, height


def train_shape(epoch: int, epochs: int, full: Shape, scale: float, until: float, most: int = 0) -> Shape:
    """The (height, width) of the training images in `epoch` of `epochs`: `train_side` of the longer side of
    `full`, the shorter one scaled alike (a multiple of `SIDE_STEP`, at least one step), so the aspect holds."""
    longest = max(full)
    side = train_side(epoch, epochs, longest, scale, until, most)
    if side == longest:
        return tuple(full)
    return tuple(max(SIDE_STEP, round(s * side / longest / SIDE_STEP) * SIDE_STEP) for s in full)


def train_side(epoch: int, epochs: int, full: int, scale: float, until: float, most: int = 0) -> int:
    """The side training images have in `epoch` (0-based) of `epochs`: `full` throughout without progressive
    resizing (`scale` 0), else `scale * full` (a multiple of `SIDE_STEP`) in the first epoch, rising linearly
    in steps of `SIDE_STEP` to `full`, which the epochs from `until` of the run on (and the last) keep, and
    after `most` epochs below it, when `most` is set (`data.progressive_scale`, `data.progressive_until` and
    `data.progressive_max_epochs`, whose defaults the config owns)."""
    start = max(SIDE_STEP, int(scale * full) // SIDE_STEP * SIDE_STEP)
    ramp = max(1, math.ceil(until * epochs) - 1)  # the first epoch at the full side
    if most:
        ramp = min(ramp, most)
    if not scale or start >= full or epoch >= min(ramp, epochs - 1):
        return full
    return min(full, start + int((full - start) * epoch / ramp) // SIDE_STEP * SIDE_STEP)


def grade_counts(labels: Sequence[int]) -> list[int]:
    """Images per grade."""
    return np.bincount(np.asarray(labels, dtype=np.int64), minlength=NUM_GRADES).tolist()


def make_loader(dataset: GradeImages, batch_size: int, cfg: DataConfig, shuffle: bool, seed: int) -> DataLoader:
    """A DataLoader of uint8 batches (`collate_squares`); with data.sampler=balanced every grade is drawn
    equally often. Augmentation (`BatchAugment`) and normalisation happen after it, on the device."""
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
        collate_fn=collate_squares,
        num_workers=cfg.num_workers,
        persistent_workers=cfg.num_workers > 0,
        pin_memory=torch.cuda.is_available(),
        drop_last=False,
    )
