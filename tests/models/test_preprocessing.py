"""`Preprocessing`: the one resize and normalisation of training, evaluation and inference."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from spine_hf.models.preprocessing import Preprocessing

PREP = Preprocessing(24, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def test_square_is_a_bilinear_squash_of_the_whole_image():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 70), dtype=np.uint8))
    square = PREP.square(image)
    assert square.shape == (24, 24) and square.dtype == np.uint8 and square.flags.writeable
    np.testing.assert_array_equal(square, np.asarray(image.resize((24, 24), Image.Resampling.BILINEAR)))
    assert PREP.square(image, 30).shape == (30, 30)


def test_normalise_repeats_the_gray_channel_and_applies_mean_and_std_per_channel():
    squares = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (3, 1, 24, 24), dtype=np.uint8))
    batch = PREP.normalise(squares)
    assert batch.shape == (3, 3, 24, 24) and batch.dtype == torch.float32
    reference = (squares.float().div(255).expand(-1, 3, -1, -1) - torch.tensor(PREP.mean).view(1, 3, 1, 1)) / (
        torch.tensor(PREP.std).view(1, 3, 1, 1)
    )
    torch.testing.assert_close(batch, reference, rtol=0, atol=1e-6)
    torch.testing.assert_close(PREP.normalise(squares.float() / 255), batch, rtol=0, atol=1e-6)


def test_normalise_array_gives_the_torch_numbers_to_the_last_bit():
    squares = np.random.default_rng(2).integers(0, 256, (4, 24, 24), dtype=np.uint8)
    batch = PREP.normalise_array(squares)
    assert batch.shape == (4, 3, 24, 24) and batch.dtype == np.float32 and batch.flags.c_contiguous
    np.testing.assert_array_equal(batch, PREP.normalise(torch.from_numpy(squares)[:, None]).numpy())
