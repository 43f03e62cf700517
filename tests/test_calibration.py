"""`calibrate`: a temperature folded into the classifier, so plain `pipeline()` gives calibrated probabilities."""

from __future__ import annotations

import json

import numpy as np
import pytest

from spine_hf.calibration import calibrate_model, fit_temperature
from spine_hf.evaluation import expected_calibration_error
from spine_hf.inference import Predictor


def test_temperature_is_folded_into_the_classifier(trained_model, tmp_path):
    data = trained_model.parent.parent / "dataset"
    report = calibrate_model(trained_model, data, tmp_path / "calibrated")
    assert report["ece_after"] <= report["ece_before"] + 1e-12
    assert report["nll_after"] <= report["nll_before"] + 1e-9
    from spine_hf.dataset_folder import load_grade_dataset

    images = [row["image"] for row in load_grade_dataset(data)["validation"]]
    before = Predictor(trained_model).logits(images)
    after = Predictor(tmp_path / "calibrated").logits(images)
    np.testing.assert_allclose(after, before / report["temperature"], rtol=1e-4, atol=1e-4)
    assert (after.argmax(1) == before.argmax(1)).all()
    assert (
        json.loads((tmp_path / "calibrated" / "calibration.json").read_text())["temperature"] == report["temperature"]
    )


def test_fit_temperature_undoes_a_known_overconfidence():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, 4000)
    true_logits = rng.normal(0, 1, (4000, 5))
    true_logits[np.arange(4000), labels] += 1.5
    # Sample labels from the softmax so that T = 1 is calibrated, then make the logits 3x overconfident.
    probs = np.exp(true_logits) / np.exp(true_logits).sum(1, keepdims=True)
    labels = np.array([rng.choice(5, p=p) for p in probs])
    temperature = fit_temperature(true_logits * 3, labels)
    assert temperature == pytest.approx(3.0, rel=0.15)
    ece_over, _ = expected_calibration_error(np.exp(true_logits * 3) / np.exp(true_logits * 3).sum(1, keepdims=True),
                                             labels)  # fmt: skip
    scaled = true_logits * 3 / temperature
    ece_fixed, _ = expected_calibration_error(np.exp(scaled) / np.exp(scaled).sum(1, keepdims=True), labels)
    assert ece_fixed < ece_over
