"""`calibrate`: a temperature folded into the classifier, so plain `pipeline()` gives calibrated probabilities."""

from __future__ import annotations

import json

import numpy as np
import pytest

from spine_hf.predict.calibration import calibrate_model, fit_temperature
from spine_hf.predict.evaluation import expected_calibration_error
from spine_hf.predict.inference import Predictor


def test_temperature_is_folded_into_the_classifier(trained_model, tmp_path):
    data = trained_model.parent.parent / "dataset"
    report = calibrate_model(trained_model, data, tmp_path / "calibrated")
    assert report["ece_after"] <= report["ece_before"] + 1e-12
    assert report["nll_after"] <= report["nll_before"] + 1e-9
    from spine_hf.data.dataset_folder import load_grade_dataset

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


def test_calibrate_stores_grade_ranges_and_referral_that_the_predictor_uses(trusted_model, trained_model):
    from spine_hf.models.conformal import RANGES_FILE
    from spine_hf.models.referral import REFERRAL_FILE, REFERRAL_TENSORS

    assert {RANGES_FILE, REFERRAL_FILE, REFERRAL_TENSORS} <= {p.name for p in trusted_model.iterdir()}
    assert not {RANGES_FILE, REFERRAL_FILE} & {p.name for p in trained_model.iterdir()}
    report = json.loads((trusted_model / "calibration.json").read_text())
    assert report["grade_ranges"]["coverage"] == 0.8 and 0 <= report["grade_ranges"]["threshold"] <= 1
    from spine_hf.data.dataset_folder import decode_split, load_grade_split

    data = trusted_model.parent / "dataset"
    assert report["referral"]["rate"] == 0.1
    assert report["referral"]["described_count"] == len(load_grade_split(data, "train")) == 40
    assert report["referral"]["referred_fraction"] <= 0.1  # of the split the threshold was chosen on
    predictor = Predictor(trusted_model)
    assert predictor.grade_ranges.coverage == 0.8 and predictor.referral.described_split == "train"
    images = decode_split(load_grade_split(data, "validation"))
    predictions = predictor.predict(images)
    for prediction in predictions:
        low, high = prediction.grade_range
        assert low <= prediction.grade <= high and prediction.coverage == 0.8
        assert prediction.in_distribution == (prediction.ood_score <= prediction.ood_threshold)
    labels = load_grade_split(data, "validation")["label"]
    covered = [p.grade_range[0] <= y <= p.grade_range[1] for p, y in zip(predictions, labels, strict=True)]
    assert np.mean(covered) >= 0.8  # on the very images the threshold was fitted on: at least nominal


def test_calibrate_on_too_few_images_says_so_and_drops_stale_ranges(trusted_model, trained_model, tmp_path, capsys):
    from spine_hf.cli import main
    from spine_hf.models.conformal import RANGES_FILE
    from spine_hf.models.referral import REFERRAL_FILE, REFERRAL_TENSORS

    data = trained_model.parent.parent / "dataset"
    out = tmp_path / "again"
    assert main(["calibrate", "--model", str(trusted_model), "--data", str(data), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "grade ranges NOT fitted: 5 calibration images are too few for 90% coverage; it needs at least 9" in printed
    assert "referral NOT fitted: 5 in-distribution images are too few for a 2% referral rate" in printed
    # The ranges and referral fitted for the previous temperature are not carried over.
    assert not {RANGES_FILE, REFERRAL_FILE, REFERRAL_TENSORS} & {p.name for p in out.iterdir()}
    assert Predictor(out).predict([np.zeros((32, 32), np.uint8)])[0].to_json().keys() == {
        "grade", "grade_name", "probabilities"}  # fmt: skip


def test_calibrate_needs_a_separate_split_to_describe(trained_model, tmp_path):
    data = trained_model.parent.parent / "dataset"
    with pytest.raises(ValueError, match="must differ"):
        calibrate_model(trained_model, data, tmp_path / "a", describe_split="validation")
    with pytest.raises(ValueError, match="--describe-split"):
        calibrate_model(trained_model, data, tmp_path / "b", describe_split="training")


def test_an_onnx_export_is_refused_with_the_order_that_works(exported_model, trained_model, tmp_path):
    data = trained_model.parent.parent / "dataset"
    with pytest.raises(ValueError, match="calibrate the PyTorch model folder it came from"):
        calibrate_model(exported_model, data, tmp_path / "c")
    assert not (tmp_path / "c").exists()
