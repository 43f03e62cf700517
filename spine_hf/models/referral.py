"""Out-of-distribution referral: is this image like the radiographs the model was trained on?

The description is the one of Lee et al. (2018): the penultimate features (the classifier's input) of
training images, one mean per grade and one covariance shared by all grades (Ledoit-Wolf shrinkage,
so that a few thousand images describe hundreds of dimensions). An image's score is its Mahalanobis
distance to the nearest grade mean. The threshold is chosen on held-out in-distribution images (the
validation split) as a conformal outlier test: the ``ceil((n + 1) * (1 - rate))``-th smallest of their
scores, so that at most about `rate` of new images like them are referred. Chosen by measurement over
max-softmax and energy scores on the knee radiographs (BENCHMARKS.md, ``python -m bench trust``).

It works for any backbone whose classifier is a linear layer (timm and transformers alike): the
features are what that layer receives. Temperature scaling does not change them.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spine_hf.models.conformal import conformal_rank, fewest_images

# Written by `spine-hf calibrate` next to config.json; a folder without them predicts without referral.
REFERRAL_FILE = "referral.json"
REFERRAL_TENSORS = "referral.safetensors"
# The share of in-distribution images referred at the shipped threshold, by default.
DEFAULT_RATE = 0.02
REFERRAL_MESSAGE = "This image does not look like the radiographs the model was trained on; do not use its grade."


def fit_description(features: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One mean per grade present in `labels` (K x D) and the precision of the shared covariance (D x D)."""
    from sklearn.covariance import LedoitWolf

    features = np.asarray(features, dtype=np.float64)
    labels = np.asarray(labels)
    grades = np.unique(labels)
    if len(features) < 2 * len(grades):
        raise ValueError(
            f"{len(features)} images of {len(grades)} grades are too few to describe the training features; "
            f"it needs at least {2 * len(grades)}, and a few hundred describe them well"
        )
    means = np.stack([features[labels == g].mean(axis=0) for g in grades])
    centred = features - means[np.searchsorted(grades, labels)]
    if not np.any(centred):
        raise ValueError("the training features do not vary within any grade (one image per grade?); describe more")
    precision = LedoitWolf(assume_centered=True).fit(centred).precision_
    return means, precision


def distances(features: np.ndarray, means: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """Mahalanobis distance of each row of `features` to the nearest of `means`."""
    features = np.asarray(features, dtype=np.float64)
    squared = np.full(len(features), np.inf)
    for mean in np.asarray(means, dtype=np.float64):
        difference = features - mean
        # A matrix product (BLAS), then a row-wise dot: np.einsum("nd,de,ne->n") gives the same numbers without
        # BLAS, 1.5 ms of a 5.7 ms one-image prediction at 512 features.
        squared = np.minimum(squared, ((difference @ precision) * difference).sum(axis=1))
    return np.sqrt(np.maximum(squared, 0.0))


def outlier_threshold(scores: np.ndarray, rate: float) -> float:
    """The score above which an image is referred, so that about `rate` of images like `scores` are.

    Raises:
        ValueError: a rate outside (0, 1), or too few images to promise it (at least (1 - rate) / rate).
    """
    if not 0 < rate < 1:
        raise ValueError(f"the referral rate must be between 0 and 1 (exclusive), not {rate}")
    ordered = np.sort(np.asarray(scores, dtype=np.float64))
    rank = conformal_rank(len(ordered), 1 - rate)
    if rank > len(ordered):
        raise ValueError(
            f"{len(ordered)} in-distribution images are too few for a {rate:.0%} referral rate; "
            f"it needs at least {fewest_images(1 - rate)}"
        )
    return float(ordered[rank - 1])


@dataclass(frozen=True)
class Referral:
    """The description of the training features and the threshold; stored in a model folder."""

    means: np.ndarray
    precision: np.ndarray
    threshold: float
    # The share of in-distribution images referred, at most about.
    rate: float
    # Where the threshold was chosen, and where the description was fitted.
    split: str
    count: int
    described_split: str
    described_count: int

    def scores(self, features: np.ndarray) -> np.ndarray:
        """Distance to the training features (higher = less like them)."""
        return distances(np.atleast_2d(features), self.means, self.precision)

    def refer(self, scores: np.ndarray) -> np.ndarray:
        """True where an image should not be graded."""
        return np.asarray(scores) > self.threshold

    def save(self, folder: str | os.PathLike) -> None:
        from safetensors.numpy import save_file

        tensors = {"means": self.means.astype(np.float32), "precision": self.precision.astype(np.float32)}
        save_file(tensors, str(Path(folder, REFERRAL_TENSORS)))
        info = {"method": "mahalanobis", "threshold": self.threshold, "rate": self.rate, "split": self.split,
                "count": self.count, "described_split": self.described_split,
                "described_count": self.described_count, "feature_dim": int(self.means.shape[1])}  # fmt: skip
        Path(folder, REFERRAL_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, folder: str | os.PathLike) -> Referral | None:
        """The referral stored in a model folder, or None when it has none."""
        path = Path(folder, REFERRAL_FILE)
        if not path.is_file():
            return None
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        try:
            info = json.loads(path.read_text(encoding="utf-8"))
            if info.get("method") != "mahalanobis":
                raise ValueError(f"unknown method {info.get('method')!r}")
            tensors = load_file(str(Path(folder, REFERRAL_TENSORS)))
            referral = cls(tensors["means"].astype(np.float64), tensors["precision"].astype(np.float64),
                           float(info["threshold"]), float(info["rate"]), str(info["split"]), int(info["count"]),
                           str(info["described_split"]), int(info["described_count"]))  # fmt: skip
        except (ValueError, KeyError, TypeError, OSError, SafetensorError) as err:
            raise ValueError(f"{path} (with {REFERRAL_TENSORS}) is not a referral written by spine-hf: {err}") from err
        if referral.precision.shape != (referral.means.shape[1],) * 2:
            raise ValueError(f"{path}: means {referral.means.shape} and precision {referral.precision.shape} differ")
        return referral


def fit_referral(described: np.ndarray, described_labels: np.ndarray, held_out: np.ndarray, *, rate: float,
                 split: str, described_split: str) -> Referral:  # fmt: skip
    """Describe the features of `described` (training images) and choose the threshold on `held_out`
    (features of in-distribution images the description did not see) for `rate`."""
    means, precision = fit_description(described, described_labels)
    threshold = outlier_threshold(distances(held_out, means, precision), rate)
    return Referral(means, precision, threshold, rate, split, len(held_out), described_split, len(described))
