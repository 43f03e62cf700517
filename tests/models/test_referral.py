"""Referral: a Mahalanobis distance to the training features, and a threshold that keeps its promise."""

from __future__ import annotations

import json

import numpy as np
import pytest

from spine_hf.models.referral import (
    REFERRAL_FILE,
    REFERRAL_TENSORS,
    Referral,
    distances,
    fit_description,
    fit_referral,
    outlier_threshold,
)


def gaussian_features(count: int, seed: int, shift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Five grade clusters in 16 dimensions with correlated noise; `shift` moves every point away."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 5, count)
    centres = np.random.default_rng(100).normal(0, 3, (5, 16))
    mixing = np.random.default_rng(101).normal(0, 1, (16, 16)) / 4
    return centres[labels] + rng.normal(0, 1, (count, 16)) @ mixing + shift, labels


def test_distance_is_the_mahalanobis_distance_to_the_nearest_mean():
    means = np.array([[0.0, 0.0], [10.0, 0.0]])
    precision = np.diag([1.0, 4.0])  # variance 1 along x, 0.25 along y
    points = np.array([[1.0, 0.0], [0.0, 1.0], [9.0, 0.5]])
    np.testing.assert_allclose(distances(points, means, precision), [1.0, 2.0, np.sqrt(1 + 1)])


def test_fit_description_recovers_grade_means_and_the_shared_covariance():
    features, labels = gaussian_features(20000, seed=1)
    means, precision = fit_description(features, labels)
    centres = np.random.default_rng(100).normal(0, 3, (5, 16))
    np.testing.assert_allclose(means, centres, atol=0.05)
    mixing = np.random.default_rng(101).normal(0, 1, (16, 16)) / 4
    np.testing.assert_allclose(np.linalg.inv(precision), mixing.T @ mixing, atol=0.03)


@pytest.mark.parametrize("rate", [0.01, 0.02, 0.05])
def test_the_threshold_refers_about_rate_of_new_in_distribution_images(rate):
    train, train_labels = gaussian_features(4000, seed=2)
    held_out, _ = gaussian_features(1000, seed=3)
    referral = fit_referral(train, train_labels, held_out, rate=rate, split="validation", described_split="train")
    new, _ = gaussian_features(50000, seed=4)
    referred = referral.refer(referral.scores(new)).mean()
    assert rate - 0.01 <= referred <= rate + 0.015  # rate + 1/(n+1) + sampling noise of a 1000-image threshold
    far, _ = gaussian_features(1000, seed=5, shift=3.0)
    assert referral.refer(referral.scores(far)).mean() > 0.99


def test_outlier_threshold_refuses_what_it_cannot_promise():
    with pytest.raises(ValueError, match="too few"):
        outlier_threshold(np.arange(20.0), 0.02)  # needs 49
    with pytest.raises(ValueError, match="between 0 and 1"):
        outlier_threshold(np.arange(100.0), 0.0)
    assert outlier_threshold(np.arange(1.0, 100.0), 0.02) == 98.0  # ceil(100 * 0.98) = 98th smallest


def test_referral_travels_as_json_and_safetensors_and_bad_files_are_refused(tmp_path):
    train, train_labels = gaussian_features(2000, seed=6)
    held_out, _ = gaussian_features(200, seed=7)
    referral = fit_referral(train, train_labels, held_out, rate=0.05, split="validation", described_split="train")
    assert Referral.load(tmp_path) is None
    referral.save(tmp_path)
    info = json.loads((tmp_path / REFERRAL_FILE).read_text())
    assert info["method"] == "mahalanobis" and info["described_count"] == 2000 and info["feature_dim"] == 16
    loaded = Referral.load(tmp_path)
    np.testing.assert_allclose(loaded.scores(held_out), referral.scores(held_out), rtol=1e-4)
    assert loaded.threshold == referral.threshold and loaded.rate == 0.05
    (tmp_path / REFERRAL_TENSORS).write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match="not a referral written by spine-hf"):
        Referral.load(tmp_path)
    (tmp_path / REFERRAL_FILE).write_text(json.dumps({**info, "method": "energy"}))
    with pytest.raises(ValueError, match="unknown method"):
        Referral.load(tmp_path)


def test_too_few_or_identical_training_features_are_refused():
    features, labels = gaussian_features(6, seed=8)
    with pytest.raises(ValueError, match="too few to describe"):
        fit_description(features[:3], np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="do not vary within any grade"):
        fit_description(np.repeat(features[:3], 2, axis=0), np.array([0, 0, 1, 1, 2, 2]))
