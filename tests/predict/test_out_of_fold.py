"""The out-of-fold predictions file read back in pool order beside folds.csv, and refused when the two differ."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from spine_hf.data.folds import FOLDS_FILE
from spine_hf.predict.out_of_fold import OOF_FILE, PROBABILITY_COLUMNS, read_oof_file

ROWS = [("train", 0, "a.png", "p1", 0, 1), ("train", 1, "b.png", "p2", 3, 0), ("validation", 0, "c.png", "p3", 4, 1)]


def _write(folder, rows, oof_files):
    with (folder / FOLDS_FILE).open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["split", "row", "file", "patient", "grade", "fold"])
        writer.writerows(rows)
    probabilities = np.eye(5)[[1, 3, 2]] * 0.6 + 0.08
    with (folder / OOF_FILE).open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "patient", "fold", "grade", "predicted_grade", *PROBABILITY_COLUMNS])
        for (_, _, _, patient, grade, fold), name, probs in zip(rows, oof_files, probabilities, strict=True):
            writer.writerow([name, patient, fold, grade, int(probs.argmax()), *(f"{p:.6f}" for p in probs)])
    return probabilities


def test_the_file_reads_back_in_pool_order_with_its_dataset_rows(tmp_path):
    probabilities = _write(tmp_path, ROWS, ["train/a.png", "train/b.png", "validation/c.png"])
    oof = read_oof_file(tmp_path)
    assert oof["split"] == ["train", "train", "validation"] and oof["row"] == [0, 1, 0]
    assert oof["file"] == ["train/a.png", "train/b.png", "validation/c.png"] and oof["patient"] == ["p1", "p2", "p3"]
    assert oof["fold"].tolist() == [1, 0, 1] and oof["grade"].tolist() == [0, 3, 4]
    np.testing.assert_allclose(oof["probabilities"], probabilities, atol=1e-6)
    assert PROBABILITY_COLUMNS == ("p_Healthy", "p_Doubtful", "p_Minimal", "p_Moderate", "p_Severe")


def test_a_file_listing_other_images_than_the_folds_is_refused(tmp_path):
    _write(tmp_path, ROWS, ["train/a.png", "validation/c.png", "train/b.png"])
    with pytest.raises(ValueError, match="list other images; run `spine-hf cv` there again"):
        read_oof_file(tmp_path)
