"""spine-hf evaluate on a trained tiny model (and, sharing its output rules, calibrate)."""

from __future__ import annotations

import csv
import json

import numpy as np
from PIL import Image

from spine_hf.cli import main
from spine_hf.predict.inference import Predictor


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
    # Nothing calibrated: no ranges, no referral, the files and columns as before.
    assert "grade_ranges" not in result and "referral" not in result and not (out / "grade_ranges.png").exists()
    assert "range_low" not in rows[0] and "ood_score" not in rows[0]


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


def test_flip_tta_averages_the_image_and_its_mirror(trained_model, tmp_path):
    from PIL import ImageOps

    from spine_hf.data.dataset_folder import decode_split, load_grade_split
    from spine_hf.grades import GRADE_NAMES
    from spine_hf.predict.evaluation import evaluate_model

    data = trained_model.parent.parent / "dataset"
    result = evaluate_model(trained_model, data, tmp_path / "e", flip_tta=True, bootstrap=10)
    assert result["flip_tta"] is True
    with (tmp_path / "e" / "predictions.csv").open() as handle:
        written = np.array([[float(row[f"p_{name}"]) for name in GRADE_NAMES] for row in csv.DictReader(handle)])
    images = decode_split(load_grade_split(data, "test"))
    predictor = Predictor(trained_model)
    plain = predictor.probabilities(images)
    mirrored = predictor.probabilities([ImageOps.mirror(image) for image in images])
    np.testing.assert_allclose(written, (plain + mirrored) / 2, atol=1e-4)
    assert np.abs(written - plain).max() > 1e-3  # the mirror really changed what was scored


def test_evaluate_measures_the_grade_ranges_and_the_referral(trusted_model, tmp_path, capsys):
    data = trusted_model.parent / "dataset"
    out = tmp_path / "eval"
    assert main(["evaluate", "--model", str(trusted_model), "--data", str(data), "--split", "train",
                 "--out", str(out), "--bootstrap", "20"]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "grade ranges (80% nominal): coverage" in printed and "referred as unlike the training images" in printed
    result = json.loads((out / "metrics.json").read_text())
    ranges, referral = result["grade_ranges"], result["referral"]
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    covered = [int(r["range_low"]) <= int(r["true_grade"]) <= int(r["range_high"]) for r in rows]
    widths = [int(r["range_high"]) - int(r["range_low"]) + 1 for r in rows]
    assert ranges["nominal_coverage"] == 0.8 and ranges["coverage"] == np.mean(covered) >= 0.8
    assert ranges["mean_width"] == np.mean(widths)
    for grade in range(5):
        mine = [c for c, r in zip(covered, rows, strict=True) if int(r["true_grade"]) == grade]
        assert ranges["per_grade_count"][grade] == len(mine)
        assert ranges["per_grade_coverage"][grade] == (np.mean(mine) if mine else None)
    assert referral["referred_count"] == sum(r["in_distribution"] == "False" for r in rows)
    assert referral["referred_fraction"] == referral["referred_count"] / len(rows)
    with Image.open(out / "grade_ranges.png") as image:
        assert image.size[0] > 800 and image.size[1] > 400
