"""Ordinal grading metrics, shipped as a local `evaluate` module (no Hub needed).

    metric = load_grading_metric()          # evaluate.load() on this very file
    metric.compute(predictions=[...], references=[...])

gives accuracy, balanced accuracy, macro-F1, quadratic weighted kappa (QWK), mean absolute error in
grades, the confusion matrix (rows = true grade) and per-grade precision and recall. The same numbers
come from `compute_grading_metrics`, which the module calls.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import datasets
import evaluate
import numpy as np
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    cohen_kappa_score,
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
)

# The number of grades (grades.NUM_GRADES; tests check they agree). evaluate.load copies this file and
# imports it on its own, so it imports nothing from spine_hf.
NUM_CLASSES = 5

_DESCRIPTION = "Metrics for ordinal severity grades: accuracy, balanced accuracy, macro-F1, QWK, MAE, confusion."
_INPUTS = """
Args:
    predictions: predicted grades (int).
    references: true grades (int).
    num_classes: number of grades (default 5).
Returns:
    accuracy, balanced_accuracy, macro_f1, qwk, mae, confusion_matrix, per_grade_precision,
    per_grade_recall, count.
"""


def compute_grading_metrics(predictions, references, num_classes: int = NUM_CLASSES) -> dict:
    """All grading metrics for integer predictions against integer references."""
    pred = np.asarray(predictions, dtype=np.int64)
    ref = np.asarray(references, dtype=np.int64)
    if pred.shape != ref.shape or pred.ndim != 1:
        raise ValueError(f"predictions and references must be 1-D of equal length, got {pred.shape} and {ref.shape}")
    if len(ref) == 0:
        raise ValueError("no predictions to score")
    labels = list(range(num_classes))
    with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
        # A grade predicted but absent from the references is normal on small or resampled sets.
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        qwk = cohen_kappa_score(ref, pred, labels=labels, weights="quadratic")
        balanced = balanced_accuracy_score(ref, pred)
    return {
        "accuracy": float(accuracy_score(ref, pred)),
        "balanced_accuracy": float(balanced),
        "macro_f1": float(f1_score(ref, pred, average="macro", zero_division=0)),
        "qwk": float(qwk),
        "mae": float(np.mean(np.abs(pred - ref))),
        "confusion_matrix": confusion_matrix(ref, pred, labels=labels).tolist(),
        "per_grade_precision": precision_score(ref, pred, labels=labels, average=None, zero_division=0).tolist(),
        "per_grade_recall": recall_score(ref, pred, labels=labels, average=None, zero_division=0).tolist(),
        "count": len(ref),
    }


class OrdinalGrading(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_INPUTS,
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references, num_classes: int = NUM_CLASSES):
        return compute_grading_metrics(predictions, references, num_classes)


def load_grading_metric(**kwargs):
    """This file loaded through `evaluate.load`, as any local evaluate module is."""
    return evaluate.load(str(Path(__file__).resolve()), **kwargs)
