"""Conformal grade ranges: contiguous, nested, and covering the true grade as often as promised."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import softmax

from spine_hf.conformal import fit_threshold, grade_range, growth_order, score


def synthetic(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """An imperfect ordinal grader: logits peak near the true grade, with noise that blurs neighbours."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 5, count)
    centre = labels + rng.normal(0, 0.8, count)
    logits = -((np.arange(5)[None] - centre[:, None]) ** 2) / 1.5 + rng.normal(0, 0.3, (count, 5))
    return softmax(logits, axis=1), labels


def test_ranges_grow_contiguously_from_the_top_grade():
    probabilities = np.array([0.05, 0.1, 0.2, 0.5, 0.15])
    assert growth_order(probabilities) == [3, 2, 4, 1, 0]
    previous = (3, 3)
    for threshold in np.linspace(0.0, 1.0, 41):
        low, high = grade_range(probabilities, threshold)
        assert low <= 3 <= high  # the top grade is always in
        assert low <= previous[0] and high >= previous[1]  # nested as the threshold grows
        previous = (low, high)
    assert grade_range(probabilities, 0.1) == (3, 3) and grade_range(probabilities, 0.7) == (2, 3)
    assert grade_range(probabilities, 0.85) == (2, 4) and grade_range(probabilities, 1.0) == (0, 4)


def test_a_grade_is_in_its_range_exactly_when_its_score_is_within_the_threshold():
    probabilities, labels = synthetic(300, seed=1)
    for threshold in (0.5, 0.8, 0.95):
        for row, label in zip(probabilities, labels, strict=True):
            low, high = grade_range(row, threshold)
            inside = score(row, label) <= threshold + 1e-9 or label == np.argmax(row)
            assert (low <= label <= high) == inside


@pytest.mark.parametrize("coverage", [0.8, 0.9, 0.95])
def test_coverage_holds_on_new_images(coverage):
    calibration, calibration_labels = synthetic(1000, seed=2)
    threshold = fit_threshold(calibration, calibration_labels, coverage)
    test, test_labels = synthetic(20000, seed=3)
    ranges = np.array([grade_range(row, threshold) for row in test])
    covered = (ranges[:, 0] <= test_labels) & (test_labels <= ranges[:, 1])
    # Never under (beyond sampling noise); over by a few points, as ranges without randomisation are.
    assert coverage - 0.015 <= covered.mean() <= coverage + 0.05
    widths = ranges[:, 1] - ranges[:, 0] + 1
    assert widths.mean() < 4  # informative: not the whole scale


def test_fit_threshold_refuses_what_it_cannot_promise():
    probabilities, labels = synthetic(8, seed=4)
    with pytest.raises(ValueError, match="too few"):
        fit_threshold(probabilities, labels, 0.95)
    with pytest.raises(ValueError, match="between 0 and 1"):
        fit_threshold(probabilities, labels, 1.0)
    with pytest.raises(ValueError, match="not one of"):
        score(probabilities[0], 5)
