"""The out-of-fold predictions file a finished `spine-hf cv` writes (``oof_predictions.csv``: file, patient,
fold, grade, predicted grade, one probability per grade), read back in pool order beside ``folds.csv``.

Cross-validation writes it; calibration (a fold ensemble's temperature, grade ranges and referral) and the
label audit read it.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from spine_hf.data.folds import FOLDS_FILE
from spine_hf.grades import GRADE_NAMES

OOF_FILE = "oof_predictions.csv"
PROBABILITY_COLUMNS = tuple(f"p_{name}" for name in GRADE_NAMES)


def read_oof_file(out: Path) -> dict:
    """A finished cross-validation's out-of-fold predictions, in pool order: each image's `split` and `row` in
    the dataset, its `file` (``split/name``) and `patient` as the file names them, `fold`, `grade` (arrays) and
    `probabilities` (N x 5), from ``folds.csv`` and OOF_FILE.

    Raises:
        ValueError: the two files do not list the same images.
    """
    with (out / FOLDS_FILE).open(newline="", encoding="utf-8", errors="surrogateescape") as handle:
        folds = list(csv.DictReader(handle))
    with (out / OOF_FILE).open(newline="", encoding="utf-8", errors="surrogateescape") as handle:
        oof = list(csv.DictReader(handle))
    if [f"{row['split']}/{row['file']}" for row in folds] != [row["file"] for row in oof]:
        raise ValueError(f"{out / FOLDS_FILE} and {out / OOF_FILE} list other images; run `spine-hf cv` there again")
    return {
        "split": [row["split"] for row in folds],
        "row": [int(row["row"]) for row in folds],
        "file": [row["file"] for row in oof],
        "patient": [row["patient"] for row in oof],
        "fold": np.array([int(row["fold"]) for row in oof]),
        "grade": np.array([int(row["grade"]) for row in oof]),
        "probabilities": np.array([[float(row[c]) for c in PROBABILITY_COLUMNS] for row in oof]),
    }
