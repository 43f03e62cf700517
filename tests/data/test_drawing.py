"""Drawing primitives of the phantoms: anti-aliased coverage, signed distances, noise at any shape."""

from __future__ import annotations

import numpy as np

from spine_hf.data.drawing import inside, local, rounded_box, smooth_noise


def test_a_box_covers_its_inside_and_not_its_outside_with_a_soft_edge():
    u, v = np.meshgrid(np.linspace(-2, 2, 81), np.linspace(-2, 2, 81))
    coverage = inside(rounded_box(u, v, 1.0, 0.5, 0.1), 0.05)
    assert coverage[40, 40] > 0.99 and coverage[0, 0] < 0.01  # centre, corner
    assert 0.3 < coverage[40, 60] < 0.7  # on the edge at u = 1: half covered
    assert np.isclose(coverage.sum() * (4 / 80) ** 2, 2.0, rtol=0.05)  # the area of a 2 x 1 box


def test_a_turned_frame_keeps_distances():
    x, y = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    u, v = local(x, y, 0.0, 0.0, np.pi / 2)
    np.testing.assert_allclose(np.hypot(u, v), [1.0, 1.0])
    np.testing.assert_allclose(u, [0.0, 1.0], atol=1e-12)


def test_noise_fills_square_and_tall_images_in_minus_one_to_one():
    for shape in (32, (96, 36)):
        noise = smooth_noise(np.random.default_rng(0), shape, cells=6)
        assert noise.shape == ((shape, shape) if isinstance(shape, int) else shape)
        assert np.abs(noise).max() == 1.0 and noise.std() > 0.1
