"""spine-hf evaluate and calibrate on a trained tiny model."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from spine_hf.calibration import calibrate_model, fit_temperature
from spine_hf.cli import main
from spine_hf.evaluation import expected_calibration_error
from spine_hf.inference import Predictor


def test_evaluate_writes_metrics_with_intervals_plots_and_csv(trained_model, tmp_path, capsys):
    data = trained_model.parent.parent / "dataset"
    out = tmp_path / "eval"
    assert main(["evaluate", "--model", str(trained_model), "--data", str(data), "--out", str(out),
                 "--bootstrap", "200"]) == 0  # fmt: skip
    assert "95% CI" in capsys.readouterr().out
    result = json.loads((out / "metrics.json").read_text())
    for entry in result["metrics"].values():
        low, high = entry["ci95"]
        assert low <= entry["value"] + 1e-9 and entry["value"] - 1e-9 <= high
    assert set(result["metrics"]) == {"accuracy", "balanced_accuracy", "macro_f1", "qwk", "mae"}
    assert len(result["per_grade"]["per_grade_recall"]["value"]) == 5
    assert "value" in result["auc_grade_ge_2"] and 0 <= result["ece"] <= 1
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    assert len(rows) == result["count"] == np.sum(result["confusion_matrix"])
    assert {"file", "true_grade", "predicted_grade", "p_Healthy", "p_Severe"} <= set(rows[0])
    for png in ("confusion_matrix.png", "reliability.png"):
        with Image.open(out / png) as image:
            assert image.size[0] > 400 and image.size[1] > 400


def test_evaluate_and_calibrate_replace_a_non_empty_folder_only_with_overwrite(trained_model, tmp_path, capsys):
    data = trained_model.parent.parent / "dataset"
    for command in (["evaluate", "--bootstrap", "10"], ["calibrate"]):
        out = tmp_path / command[0]
        out.mkdir()
        (out / "notes.txt").write_text("mine")
        args = [*command, "--model", str(trained_model), "--data", str(data), "--out", str(out)]
        assert main(args) == 1
        assert "--overwrite" in capsys.readouterr().err
        assert [p.name for p in out.iterdir()] == ["notes.txt"]
        assert main([*args, "--overwrite"]) == 0
        assert not (out / "notes.txt").exists() and (out / ("metrics.json" if command[0] == "evaluate" else
                                                             "calibration.json")).is_file()  # fmt: skip
        assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no staging left


def test_flip_tta_is_recorded(trained_model, tmp_path):
    from spine_hf.evaluation import evaluate_model

    result = evaluate_model(trained_model, trained_model.parent.parent / "dataset", tmp_path / "e", flip_tta=True,
                            bootstrap=10)  # fmt: skip
    assert result["flip_tta"] is True


def test_temperature_is_folded_into_the_classifier(trained_model, tmp_path):
    data = trained_model.parent.parent / "dataset"
    report = calibrate_model(trained_model, data, tmp_path / "calibrated")
    assert report["ece_after"] <= report["ece_before"] + 1e-12
    assert report["nll_after"] <= report["nll_before"] + 1e-9
    from spine_hf.data import load_grade_dataset

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
