"""Anti-aliased shapes for the synthetic phantoms (`phantoms`, `phantoms_ap`): signed distances, smooth noise, blur.

Every shape is a signed distance field over the image's sampling grid (negative inside), turned into
coverage by `inside`, so edges are anti-aliased at any size and the same anatomy renders the same at
any resolution.
"""

from __future__ import annotations

import numpy as np
from PIL import Image


def local(x, y, cx, cy, angle):
    """Coordinates in a frame centred on (cx, cy) and turned by `angle`."""
    dx, dy = x - cx, y - cy
    return np.cos(angle) * dx + np.sin(angle) * dy, -np.sin(angle) * dx + np.cos(angle) * dy


def rounded_box(u, v, half_u, half_v, radius):
    """Signed distance (approximately, half_v may vary along u) to a rounded rectangle."""
    radius = np.minimum(radius, np.minimum(half_u, half_v) * 0.9)
    qu, qv = np.abs(u) - half_u + radius, np.abs(v) - half_v + radius
    outside = np.hypot(np.maximum(qu, 0.0), np.maximum(qv, 0.0))
    return outside + np.minimum(np.maximum(qu, qv), 0.0) - radius


def inside(distance, softness):
    """Anti-aliased inside-ness of a signed distance field: 1 inside, 0 outside."""
    return 1.0 / (1.0 + np.exp(np.clip(distance / np.maximum(softness, 1e-9), -50.0, 50.0)))


def smooth_noise(rng: np.random.Generator, shape: int | tuple[int, int], cells: int) -> np.ndarray:
    """Noise over a square of `shape` pixels or a (rows, columns) image, with features about rows/cells pixels
    across, roughly in -1..1."""
    rows, columns = (shape, shape) if isinstance(shape, int) else shape
    grid = rng.normal(0.0, 1.0, (cells + 3, max(3, round(cells * columns / rows)) + 3)).astype(np.float32)
    values = np.asarray(Image.fromarray(grid).resize((columns, rows), Image.Resampling.BICUBIC), dtype=np.float64)
    return values / max(float(np.abs(values).max()), 1e-9)


def blur(image, sigma):
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(image, sigma, mode="nearest") if sigma > 0.3 else image
