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

Per grade (class-conditional, "Mondrian" conformal prediction; Vovk et al. 2005): one threshold per
true grade, each the same quantile of the scores of that grade's calibration images only, so the
coverage holds for every true grade, not only on average over grades (where a rare or ambiguous grade
can fall short while a common one over-covers). A range then runs along the growth order to the last
grade whose score is within its own threshold; it holds every grade within its threshold, so each
grade's coverage is at least the promise, and it stays contiguous. Each grade needs its own
``coverage / (1 - coverage)`` calibration images, so it suits calibration sets of hundreds or more
(the out-of-fold predictions of `spine-hf cv`).

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


def grade_range(
    probabilities: np.ndarray, threshold: float, per_grade: tuple[float, ...] | None = None
) -> tuple[int, int]:
    """The lowest and highest grade of the range for one image: every grade whose score is within
    `threshold` (a prefix of the growth order, so contiguous; the most probable grade always). With
    `per_grade` thresholds, the growth order up to the last grade whose score is within its own."""
    order = growth_order(probabilities)
    if per_grade is None:
        members, mass = [order[0]], float(probabilities[order[0]])
        for member in order[1:]:
            if mass > threshold + _TOLERANCE:
                break
            members.append(member)
            mass += float(probabilities[member])
        return min(members), max(members)
    last, mass = 0, 0.0
    for position, member in enumerate(order):
        if mass <= per_grade[member] + _TOLERANCE:
            last = position
        mass += float(probabilities[member])
    return min(order[: last + 1]), max(order[: last + 1])


def too_few_per_grade(labels: np.ndarray, coverage: float) -> list[tuple[int, int]]:
    """(grade, its image count) for every grade with too few calibration images for its own threshold."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=NUM_GRADES)
    return [(g, int(n)) for g, n in enumerate(counts) if conformal_rank(int(n), coverage) > n]


def fit_per_grade_thresholds(probabilities: np.ndarray, labels: np.ndarray, coverage: float) -> tuple[float, ...]:
    """One threshold per grade for `coverage` of that grade's calibration images.

    Raises:
        ValueError: a grade with too few calibration images for the coverage (all such grades named).
    """
    labels = np.asarray(labels)
    short = too_few_per_grade(labels, coverage)
    if short:
        listed = ", ".join(f"grade {g} has {n}" for g, n in short)
        raise ValueError(f"per-grade ranges for {coverage:.0%} coverage need at least {fewest_images(coverage)} "
                         f"calibration images of every grade: {listed}")  # fmt: skip
    return tuple(fit_threshold(probabilities[labels == g], labels[labels == g], coverage) for g in range(NUM_GRADES))


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
    # One threshold per true grade (coverage for each grade; `threshold` is then the marginal one, kept for
    # reference), or None: `threshold` for all (coverage over all grades together).
    per_grade: tuple[float, ...] | None = None

    @property
    def method(self) -> str:
        return "marginal" if self.per_grade is None else "per_grade"

    def ranges(self, probabilities: np.ndarray) -> np.ndarray:
        """N x 2 (lowest, highest grade) for N x grades probabilities."""
        rows = np.atleast_2d(probabilities)
        found = [grade_range(row, self.threshold, self.per_grade) for row in rows]
        return np.array(found, dtype=np.int64).reshape(len(rows), 2)

    def save(self, folder: str | os.PathLike) -> None:
        data = {**asdict(self), "method": self.method}
        Path(folder, RANGES_FILE).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, folder: str | os.PathLike) -> GradeRanges | None:
        """The ranges stored in a model folder, or None when it has none."""
        path = Path(folder, RANGES_FILE)
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            per_grade = data.get("per_grade")
            per_grade = None if per_grade is None else tuple(float(value) for value in per_grade)
            ranges = cls(float(data["coverage"]), float(data["threshold"]), str(data["split"]), int(data["count"]),
                         per_grade)  # fmt: skip
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{path} is not a grade-range file written by `spine-hf calibrate`: {err}") from err
        thresholds = [ranges.threshold, *(ranges.per_grade or ())]
        if not 0 < ranges.coverage < 1 or not all(0 <= t <= 1 + _TOLERANCE for t in thresholds):
            raise ValueError(f"{path}: coverage {ranges.coverage} or a threshold in {thresholds} is out of range")
        if ranges.per_grade is not None and len(ranges.per_grade) != NUM_GRADES:
            raise ValueError(f"{path}: {len(ranges.per_grade)} per-grade thresholds for {NUM_GRADES} grades")
        return ranges


def fit_grade_ranges(probabilities: np.ndarray, labels: np.ndarray, coverage: float, split: str,
                     per_grade: bool = False) -> GradeRanges:  # fmt: skip
    """`GradeRanges` for `coverage` fitted on a split's probabilities and true grades: over all grades
    together, or (`per_grade`) for each true grade."""
    thresholds = fit_per_grade_thresholds(probabilities, labels, coverage) if per_grade else None
    return GradeRanges(coverage, fit_threshold(probabilities, labels, coverage), split, len(labels), thresholds)


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
