"""The training data path's batch augmentation: per-image random crop, rotation, flip and intensity."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from spine_hf.config import DataConfig
from spine_hf.models.preprocessing import Preprocessing
from spine_hf.training.transforms import SIDE_STEP, BatchAugment, collate_squares, train_side

PREP = Preprocessing(32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def _rows(count: int = 8, side: int = 37) -> list[tuple[torch.Tensor, int]]:
    generator = torch.Generator().manual_seed(0)
    return [
        (torch.randint(0, 256, (1, side, side), dtype=torch.uint8, generator=generator), i % 5) for i in range(count)
    ]


def _apply(augment: BatchAugment, rows) -> tuple[torch.Tensor, torch.Tensor]:
    """What the training loop does: the loader's uint8 batch, then the augmentation where it lies."""
    images, labels = collate_squares(rows)
    assert images.dtype == torch.uint8 and images.shape[1] == 1
    return augment(images), labels


def _plain(rows) -> torch.Tensor:
    images = torch.stack([image for image, _ in rows]).float() / 255
    resized = F.interpolate(images, size=(32, 32), mode="bilinear", align_corners=False)
    return (resized.expand(-1, 3, -1, -1) - 0.5) / 0.25


def test_without_randomness_it_is_a_plain_resize_and_normalisation():
    rows = _rows()
    cfg = DataConfig(min_scale=1.0, rotate=0.0, hflip=False, intensity=0.0)
    pixels, labels = _apply(BatchAugment(cfg, PREP), rows)
    assert pixels.shape == (8, 3, 32, 32) and labels.tolist() == [0, 1, 2, 3, 4, 0, 1, 2]
    torch.testing.assert_close(pixels, _plain(rows), atol=1e-5, rtol=0)


def test_flips_are_per_image():
    rows = _rows(count=32)
    torch.manual_seed(1)
    pixels, _ = _apply(BatchAugment(DataConfig(min_scale=1.0, rotate=0.0, hflip=True, intensity=0.0), PREP), rows)
    plain = _plain(rows)
    flipped = [bool(torch.allclose(p, torch.flip(q, dims=[2]), atol=1e-5)) for p, q in zip(pixels, plain, strict=True)]
    kept = [bool(torch.allclose(p, q, atol=1e-5)) for p, q in zip(pixels, plain, strict=True)]
    assert all(f or k for f, k in zip(flipped, kept, strict=True))
    assert 4 < sum(flipped) < 28  # about half, each image drawing its own


def test_every_image_gets_its_own_crop_and_the_seed_repeats_them():
    image = _rows(count=1)[0][0]
    rows = [(image, 0)] * 6  # the same picture six times
    augment = BatchAugment(DataConfig(), PREP)
    torch.manual_seed(3)
    first, _ = _apply(augment, rows)
    torch.manual_seed(3)
    again, _ = _apply(augment, rows)
    torch.testing.assert_close(first, again)
    assert all(not torch.allclose(first[0], other) for other in first[1:])
    assert torch.isfinite(first).all()
    low, high = (0 - 0.5) / 0.25, (1 - 0.5) / 0.25
    assert first.min() >= low - 1e-5 and first.max() <= high + 1e-5


def test_the_sampling_grid_and_normalisation_match_torchs_reference():
    augment = BatchAugment(DataConfig(), Preprocessing(29, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)))
    theta = torch.randn(5, 2, 3, generator=torch.Generator().manual_seed(2))
    reference = F.affine_grid(theta, [5, 1, 29, 29], align_corners=False)
    torch.testing.assert_close(augment._grid(theta), reference, atol=1e-6, rtol=0)
    rows = _rows(count=5)
    torch.manual_seed(4)
    pixels, _ = _apply(augment, rows)
    # The same draws, then torch's affine_grid and broadcast normalisation: the same batch.
    torch.manual_seed(4)
    original = BatchAugment._grid
    try:
        BatchAugment._grid = lambda self, t: F.affine_grid(t, [len(t), 1, *self.size], align_corners=False)
        expected, _ = _apply(augment, rows)
    finally:
        BatchAugment._grid = original
    torch.testing.assert_close(pixels, expected, atol=1e-4, rtol=0)  # float rounding, far below 1/255
    gray = pixels[:, :1] * 0.229 + 0.485  # every channel is the same grey, normalised per channel
    torch.testing.assert_close(pixels[:, 1:2] * 0.224 + 0.456, gray, atol=1e-5, rtol=0)
    torch.testing.assert_close(pixels[:, 2:3] * 0.225 + 0.406, gray, atol=1e-5, rtol=0)


def test_progressive_sides_rise_in_steps_to_the_full_side_and_end_there():
    until = DataConfig().progressive_until  # the default: full size from three quarters of the run on
    assert until == 0.75
    for epochs in (2, 3, 10, 17, 40):
        sides = [train_side(epoch, epochs, 128, 0.75, until) for epoch in range(epochs)]
        assert sides[0] == 96 and sides[-1] == 128, sides
        assert sides == sorted(sides) and all(side % SIDE_STEP == 0 for side in sides)
        assert set(sides[max(0, math.ceil(until * epochs) - 1) :]) == {128}, sides  # the last quarter at full size
        if epochs >= 10:
            assert set(sides) == {96, 112, 128}
    assert {train_side(epoch, 10, 128, 0.0, until) for epoch in range(10)} == {128}  # off
    assert train_side(0, 1, 128, 0.75, until) == 128  # a one-epoch run trains at the size it is evaluated at
    assert train_side(0, 10, 224, 0.75, until) == 160  # 168 rounded down to a multiple of 16
    assert train_side(0, 10, 32, 0.3, until) == 16  # never below one step
    early = [train_side(epoch, 20, 128, 0.75, 0.5) for epoch in range(20)]
    assert early[0] == 96 and set(early[9:]) == {128} and early[8] < 128  # full size from half the run on


def test_progressive_resizing_may_be_held_to_a_number_of_epochs_below_the_full_side():
    long = [train_side(epoch, 44, 128, 0.75, 0.35, most=6) for epoch in range(44)]
    assert long[:6] == [96, 96, 96, 112, 112, 112] and set(long[6:]) == {128}  # not 15 epochs below 128 px
    assert [train_side(epoch, 44, 128, 0.75, 0.35) for epoch in range(44)].count(128) == 29  # unlimited
    for epochs in (2, 10, 19):  # where the part of the run is shorter than the limit, it stands
        limited = [train_side(epoch, epochs, 128, 0.75, 0.35, most=6) for epoch in range(epochs)]
        assert limited == [train_side(epoch, epochs, 128, 0.75, 0.35) for epoch in range(epochs)]


def test_the_augmentation_samples_at_the_side_it_is_set_to():
    augment = BatchAugment(DataConfig(), PREP)
    augment.size = 16
    pixels, _ = _apply(augment, _rows())
    assert pixels.shape == (8, 3, 16, 16)


def test_the_crop_is_lighter_at_full_side_only_when_asked():
    cfg = DataConfig(min_scale=0.3, progressive_scale=0.75, full_side_min_scale=0.9, rotate=0.0, intensity=0.0)
    augment = BatchAugment(cfg, PREP)
    torch.manual_seed(0)
    augment.size = 16  # below the model's 32 px: the strong crop
    assert augment.min_scale == 0.3
    width, height = augment._crop_sizes(4000)
    assert (width * height).min() < 0.35
    augment.size = PREP.size  # at full side: the light crop
    assert augment.min_scale == 0.9
    width, height = augment._crop_sizes(4000)
    assert (width * height).min() >= 0.9 - 1e-6
    assert BatchAugment(DataConfig(min_scale=0.3, progressive_scale=0.75), PREP).min_scale == 0.3  # 0 = min_scale


def test_the_rotation_is_lighter_at_full_side_only_when_asked():
    # No crop, flip or intensity change: only the rotation is random.
    cfg = DataConfig(
        min_scale=1.0, hflip=False, intensity=0.0, rotate=30.0, progressive_scale=0.75, full_side_rotate=0.0
    )
    augment, rows = BatchAugment(cfg, PREP), _rows()

    def twice() -> tuple[torch.Tensor, torch.Tensor]:
        torch.manual_seed(0)
        first, _ = _apply(augment, rows)
        torch.manual_seed(1)
        return first, _apply(augment, rows)[0]

    augment.size = 16  # below the model's 32 px: rotations of up to 30 degrees
    assert augment.rotate == 30.0
    first, second = twice()
    assert not torch.allclose(first, second)
    augment.size = PREP.size  # at full side: no rotation, so every draw gives the same images
    assert augment.rotate == 0.0
    first, second = twice()
    assert torch.allclose(first, second)
    assert BatchAugment(DataConfig(rotate=7.0, progressive_scale=0.75), PREP).rotate == 7.0  # -1 = rotate
