"""The local evaluate module: offline, and the numbers sklearn gives."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score

from spine_hf.predict.metrics import compute_grading_metrics, load_grading_metric


def test_local_evaluate_module_loads_offline_and_matches_sklearn():
    rng = np.random.default_rng(0)
    references = rng.integers(0, 5, 200)
    predictions = np.clip(references + rng.integers(-1, 2, 200), 0, 4)
    metric = load_grading_metric()
    result = metric.compute(predictions=predictions, references=references)
    assert result == compute_grading_metrics(predictions, references)
    assert result["qwk"] == pytest.approx(cohen_kappa_score(references, predictions, weights="quadratic"))
    assert result["mae"] == pytest.approx(np.abs(predictions - references).mean())
    assert np.array(result["confusion_matrix"]).sum() == 200 == result["count"]
    assert np.trace(result["confusion_matrix"]) / 200 == pytest.approx(result["accuracy"])


def test_batches_added_one_by_one_give_the_same_result():
    metric = load_grading_metric()
    pred, ref = [0, 1, 2, 3, 4, 4, 2, 1], [0, 1, 2, 3, 4, 3, 1, 1]
    for p, r in zip(pred, ref, strict=True):
        metric.add(prediction=p, reference=r)
    assert metric.compute() == compute_grading_metrics(pred, ref)


def test_perfect_and_missing_grades():
    perfect = compute_grading_metrics([0, 1, 2, 3, 4], [0, 1, 2, 3, 4])
    assert perfect["qwk"] == perfect["accuracy"] == perfect["balanced_accuracy"] == 1.0
    partial = compute_grading_metrics([0, 0, 1], [0, 1, 1])  # grades 2-4 absent
    assert len(partial["confusion_matrix"]) == 5 and partial["per_grade_recall"][4] == 0.0
    with pytest.raises(ValueError, match="no predictions"):
        compute_grading_metrics([], [])


def test_the_standalone_module_counts_the_projects_grades():
    from spine_hf.grades import NUM_GRADES
    from spine_hf.predict.metrics import NUM_CLASSES

    assert NUM_CLASSES == NUM_GRADES
