"""Conformal grade ranges: a contiguous range of grades that holds the true grade at a chosen coverage.

Split conformal prediction for ordinal labels, in the spirit of ordinal APS (Lu, Angelopoulos et al.
2022). A range starts at the most probable grade and grows one neighbour at a time, always towards the
more probable side (`growth_order`), so every range is contiguous. A grade's conformity score is the
probability mass the range had to take in *before* reaching it (0 for the most probable grade); the
range holds every grade whose score is at most a threshold ``q``, a prefix of the growth order, so the
ranges are nested in ``q`` and never empty. ``q`` is the ``ceil((n + 1) * coverage)``-th smallest score
of the true grades of n calibration images, which gives coverage of at least `coverage` on images
exchangeable with them, and at most about ``coverage + 1 / (n + 1)`` unless the most probable grade
alone is right more often than `coverage` (then every range is that one grade).

Why the mass *before* the grade: counting the grade's own mass too and always keeping the most
probable grade (the first version of this module) over-covers, because that grade is kept even when
its own mass is above ``q``: 0.84 at a nominal 0.80 on synthetic ordinal logits; on the knee
radiographs it reached nominal coverage but with wider ranges (2.50 against 2.37 grades at 90 %,
``python -m bench trust``). Randomised APS would reach nominal coverage too, but would give the same
image different ranges on different calls; this score is deterministic.
"""

from __future__ import annotations

import itertools
import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from spine_hf.grades import GRADE_NAMES, NUM_GRADES

# Written by `spine-hf calibrate` next to config.json; a folder without it predicts without ranges.
RANGES_FILE = "grade_ranges.json"
# Keeps a calibration image's own grade inside its range despite float rounding of the sums.
_TOLERANCE = 1e-9


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
    """The probability mass a range takes in before it reaches `grade` (lower is more conforming)."""
    mass = 0.0
    for member in growth_order(probabilities):
        if member == grade:
            return mass
        mass += float(probabilities[member])
    raise ValueError(f"grade {grade} is not one of the {len(probabilities)} grades")


def fit_threshold(probabilities: np.ndarray, labels: np.ndarray, coverage: float) -> float:
    """The threshold for `coverage` from calibration images (N x grades probabilities, N labels).

    Raises:
        ValueError: a coverage outside (0, 1), or too few images for it (at least coverage / (1 - coverage)).
    """
    if not 0 < coverage < 1:
        raise ValueError(f"coverage must be between 0 and 1 (exclusive), not {coverage}")
    scores = np.sort([score(row, int(label)) for row, label in zip(probabilities, labels, strict=True)])
    rank = conformal_rank(len(scores), coverage)
    if rank > len(scores):
        raise ValueError(
            f"{len(scores)} calibration images are too few for {coverage:.0%} coverage; "
            f"it needs at least {fewest_images(coverage)}"
        )
    return float(scores[rank - 1])


def conformal_rank(count: int, level: float) -> int:
    """``ceil((count + 1) * level)``: the rank (from 1) of the calibration score that is the threshold
    (float rounding of the product must not push it up one: 10 * 0.9 is 9, not 10)."""
    return math.ceil((count + 1) * level - 1e-9)


def fewest_images(level: float) -> int:
    """The smallest calibration set whose `conformal_rank` at `level` is one of its own scores."""
    return next(n for n in itertools.count(1) if conformal_rank(n, level) <= n)


def grade_range(probabilities: np.ndarray, threshold: float) -> tuple[int, int]:
    """The lowest and highest grade of the range for one image: every grade whose score is within
    `threshold` (a prefix of the growth order, so contiguous; the most probable grade always)."""
    order = growth_order(probabilities)
    members, mass = [order[0]], float(probabilities[order[0]])
    for member in order[1:]:
        if mass > threshold + _TOLERANCE:
            break
        members.append(member)
        mass += float(probabilities[member])
    return min(members), max(members)


def range_text(low: int, high: int) -> str:
    """ "1-2" for a range, "2" for a single grade."""
    return f"{low}" if low == high else f"{low}-{high}"


@dataclass(frozen=True)
class GradeRanges:
    """A fitted threshold and what it promises; stored as `RANGES_FILE` in a model folder."""

    # The share of new images (like the calibration ones) whose range holds their true grade, at least.
    coverage: float
    threshold: float
    # Where it was fitted: the split and its number of images.
    split: str
    count: int

    def ranges(self, probabilities: np.ndarray) -> np.ndarray:
        """N x 2 (lowest, highest grade) for N x grades probabilities."""
        rows = np.atleast_2d(probabilities)
        return np.array([grade_range(row, self.threshold) for row in rows], dtype=np.int64).reshape(len(rows), 2)

    def save(self, folder: str | os.PathLike) -> None:
        Path(folder, RANGES_FILE).write_text(json.dumps(asdict(self), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, folder: str | os.PathLike) -> GradeRanges | None:
        """The ranges stored in a model folder, or None when it has none."""
        path = Path(folder, RANGES_FILE)
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            ranges = cls(float(data["coverage"]), float(data["threshold"]), str(data["split"]), int(data["count"]))
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{path} is not a grade-range file written by `spine-hf calibrate`: {err}") from err
        if not 0 < ranges.coverage < 1 or not 0 <= ranges.threshold <= 1 + _TOLERANCE:
            raise ValueError(f"{path}: coverage {ranges.coverage} or threshold {ranges.threshold} is out of range")
        return ranges


def fit_grade_ranges(probabilities: np.ndarray, labels: np.ndarray, coverage: float, split: str) -> GradeRanges:
    """`GradeRanges` for `coverage` fitted on a split's probabilities and true grades."""
    return GradeRanges(coverage, fit_threshold(probabilities, labels, coverage), split, len(labels))


def coverage_report(ranges: np.ndarray, labels: np.ndarray) -> dict:
    """Empirical coverage and mean width (in grades), overall and per true grade (None where a grade is absent)."""
    labels = np.asarray(labels)
    covered = (ranges[:, 0] <= labels) & (labels <= ranges[:, 1])
    widths = ranges[:, 1] - ranges[:, 0] + 1

    def per_grade(values: np.ndarray) -> list[float | None]:
        return [float(values[labels == g].mean()) if (labels == g).any() else None for g in range(NUM_GRADES)]

    return {
        "coverage": float(covered.mean()),
        "mean_width": float(widths.mean()),
        "per_grade_coverage": per_grade(covered),
        "per_grade_mean_width": per_grade(widths),
        "per_grade_count": [int((labels == g).sum()) for g in range(NUM_GRADES)],
        "grade_names": list(GRADE_NAMES),
    }
