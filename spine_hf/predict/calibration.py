"""Temperature scaling folded into the classifier, so that plain `pipeline()` gives calibrated probabilities.

A single temperature T is fitted on a validation split: the NLL-optimal one when it lowers the
expected calibration error, otherwise the temperature with the lowest ECE among those whose NLL is
no worse than T = 1 (the NLL optimum alone can raise ECE; on the knee radiographs it did, T = 1.02
moved ECE from 0.035 to 0.040). T = 1 is always a candidate, so ECE never gets worse on the split.
Dividing the final linear layer's weight and bias by T gives exactly the scaled logits, so the saved
folder needs no extra code anywhere it is loaded. The top grade never changes.

On the same split, with the temperature applied, `calibrate_model` also fits the conformal grade
ranges for a coverage (`conformal.py`) and chooses the referral threshold (`referral.py`) over a
description of the training images' features; both are stored beside the weights, where `Predictor`
finds them. When the split is too small for the coverage or the referral rate asked for, that part
is left out and the report says why.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax

from spine_hf.data.dataset_folder import decode_split, load_grade_dataset, load_grade_split
from spine_hf.models.conformal import RANGES_FILE, coverage_report, fit_grade_ranges, too_few_per_grade
from spine_hf.models.folder import ENSEMBLE_FILE, ModelFolder
from spine_hf.models.referral import DEFAULT_RATE, REFERRAL_FILE, REFERRAL_TENSORS, fit_referral
from spine_hf.outputs import check_new_output, staged_folder
from spine_hf.predict.evaluation import expected_calibration_error
from spine_hf.predict.inference import Predictor

CALIBRATION_FILE = "calibration.json"
DEFAULT_COVERAGE = 0.9
# Training images whose features describe the training distribution, at most (a seeded sample beyond).
DESCRIBE_LIMIT = 5000


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    return -float(log_softmax(logits / temperature, axis=1)[np.arange(len(labels)), labels].mean())


def ece_at(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    return expected_calibration_error(softmax(logits / temperature, axis=1), labels)[0]


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The calibrating temperature for these logits (see the module docstring)."""
    best_nll = float(minimize_scalar(lambda t: nll(logits, labels, t), bounds=(0.05, 20.0), method="bounded").x)
    if ece_at(logits, labels, best_nll) <= ece_at(logits, labels):
        return best_nll
    limit = nll(logits, labels) + 1e-9
    candidates = [1.0, best_nll, *np.exp(np.linspace(np.log(0.25), np.log(4.0), 121))]
    allowed = [t for t in candidates if nll(logits, labels, t) <= limit] or [1.0]
    return float(min(allowed, key=lambda t: (ece_at(logits, labels, t), nll(logits, labels, t))))


def calibrate_model(
    model: str | os.PathLike,
    data: str | os.PathLike,
    out: str | os.PathLike,
    *,
    split: str = "validation",
    coverage: float = DEFAULT_COVERAGE,
    referral_rate: float = DEFAULT_RATE,
    describe_split: str = "train",
    per_grade: bool | None = None,
    cv_folder: str | os.PathLike | None = None,
    overwrite: bool = False,
) -> dict:
    """Fit T, the grade ranges for `coverage` and the referral threshold for `referral_rate` on `split` (the
    referral's description on up to `DESCRIBE_LIMIT` images of `describe_split`), and write a copy of the
    model folder with all of them in; returns the report (also written as calibration.json).

    The ranges hold `coverage` for each true grade with `per_grade`, over all grades together without;
    None (the default) chooses per grade for a fold ensemble, whose out-of-fold predictions give every
    grade enough images (on the knee radiographs every grade came within 2 points of 90 % that way, and
    up to 10 points off with one threshold: BENCHMARKS.md), and one threshold for a single split, or
    wherever some grade has too few images for its own.

    A fold ensemble (`spine-hf cv`) is fitted on its cross-validation's out-of-fold predictions instead
    (`cv_folder`, by default the folder that holds the ensemble): T and the ranges on every pooled image,
    each predicted by the member that did not see it; the referral on its own network's held-out fold,
    described by that network's training folds. T is folded into every member."""
    check_new_output(out, overwrite)
    predictor = Predictor(model)
    if predictor.backend == "onnx":
        raise ValueError(f"{model} is an ONNX export: calibrate the PyTorch model folder it came from (the "
                         "temperature is folded into its weights), then export the calibrated folder")  # fmt: skip
    if predictor.folder.members:
        fitting = _out_of_fold(predictor, data, Path(cv_folder) if cv_folder else predictor.folder.path.parent)
    else:
        fitting = _split(predictor, data, split, describe_split)
    logits, labels, features = fitting["logits"], fitting["labels"], fitting["features"]
    temperature = fit_temperature(logits, labels)
    report = {
        "temperature": temperature,
        "split": fitting["split"],
        "count": len(labels),
        "ece_before": ece_at(logits, labels),
        "ece_after": ece_at(logits, labels, temperature),
        "nll_before": nll(logits, labels),
        "nll_after": nll(logits, labels, temperature),
    }
    probabilities = softmax(logits / temperature, axis=1)
    if per_grade is None:
        per_grade = bool(predictor.folder.members) and not too_few_per_grade(labels, coverage)
    try:
        ranges = fit_grade_ranges(probabilities, labels, coverage, fitting["split"], per_grade=per_grade)
        width = coverage_report(ranges.ranges(probabilities), labels)["mean_width"]
        report["grade_ranges"] = {"coverage": coverage, "method": ranges.method, "threshold": ranges.threshold,
                                  "per_grade": ranges.per_grade, "mean_width": width}  # fmt: skip
    except ValueError as err:
        ranges, report["grade_ranges"] = None, {"not_fitted": str(err)}
    try:
        referral = fit_referral(fitting["described"], fitting["described_labels"], features, rate=referral_rate,
                                split=fitting["held_out"], described_split=fitting["described_split"])  # fmt: skip
        report["referral"] = {"rate": referral_rate, "threshold": referral.threshold,
                              "described_count": len(fitting["described"]), "held_out": fitting["held_out"],
                              "referred_fraction": float(referral.refer(referral.scores(features)).mean())}  # fmt: skip
    except ValueError as err:
        referral, report["referral"] = None, {"not_fitted": str(err)}
    with staged_folder(out, overwrite) as staging:
        shutil.copytree(predictor.folder.path, staging, dirs_exist_ok=True)
        folder = ModelFolder.read(staging)
        members = folder.member_folders()
        # A distilled own network is outside the mean; pipeline() loads it, so it is scaled too.
        for member in members + ([folder] if all(m is not folder for m in members) else []):
            for stale in (RANGES_FILE, REFERRAL_FILE, REFERRAL_TENSORS):  # fitted for the model before this one
                Path(member.path, stale).unlink(missing_ok=True)
            member.scale_classifier(temperature)
        if ranges is not None:
            ranges.save(staging)
        if referral is not None:
            referral.save(staging)
        (staging / CALIBRATION_FILE).write_text(json.dumps(report, indent=2) + "\n")
    return report


def _split(predictor: Predictor, data, split: str, describe_split: str) -> dict:
    """What a single network is calibrated on: the logits and features of `split`, the features of (up to
    `DESCRIBE_LIMIT` images of) `describe_split`."""
    if describe_split == split:
        raise ValueError(f"--describe-split must differ from --split ({split}): the referral threshold is chosen "
                         "on images the description has not seen")  # fmt: skip
    rows = load_grade_split(data, split)
    try:
        described_rows = load_grade_split(data, describe_split)
    except ValueError as err:
        raise ValueError(f"{err}; the referral describes the training images' features: name the split that "
                         "holds them with --describe-split") from err  # fmt: skip
    features, logits = predictor.features(decode_split(rows))
    described_rows = _sample(described_rows)
    described, _ = predictor.features(decode_split(described_rows))
    return {"logits": logits, "labels": np.asarray(rows["label"], dtype=np.int64), "features": features,
            "split": split, "held_out": split, "described": described,
            "described_labels": np.asarray(described_rows["label"]), "described_split": describe_split}  # fmt: skip


def _sample(rows):
    """At most `DESCRIBE_LIMIT` rows, a seeded sample beyond."""
    if len(rows) <= DESCRIBE_LIMIT:
        return rows
    return rows.select(np.sort(np.random.default_rng(0).choice(len(rows), DESCRIBE_LIMIT, replace=False)))


def _out_of_fold(predictor: Predictor, data, cv_folder: Path) -> dict:
    """What a fold ensemble is calibrated on: its cross-validation's out-of-fold probabilities (as logits), and
    its own network's features on that network's held-out fold and (up to `DESCRIBE_LIMIT` of) its training
    folds."""
    from spine_hf.predict.out_of_fold import OOF_FILE, read_oof_file

    if not (cv_folder / OOF_FILE).is_file():
        raise ValueError(f"{predictor.folder.path} is a fold ensemble, calibrated on its cross-validation's "
                         f"out-of-fold predictions, and {cv_folder} has no {OOF_FILE}: give the cross-validation "
                         "folder with --cv")  # fmt: skip
    oof = read_oof_file(cv_folder)
    info = json.loads((predictor.folder.path / ENSEMBLE_FILE).read_text(encoding="utf-8"))
    own = info["single_network"]
    # The fold the own network never saw (a distilled one trains on the same rows as the fold it learnt beside).
    fold = int(info.get("single_network_fold", own.removeprefix("fold_")))
    dataset = load_grade_dataset(data)
    held = [i for i, f in enumerate(oof["fold"]) if f == fold]
    trained = [i for i, f in enumerate(oof["fold"]) if f != fold]
    if len(trained) > DESCRIBE_LIMIT:
        trained = sorted(np.random.default_rng(0).choice(trained, DESCRIBE_LIMIT, replace=False).tolist())

    def features_of(positions: list[int]) -> np.ndarray:
        images: list = [None] * len(positions)
        for split in dict.fromkeys(oof["split"][i] for i in positions):  # one decode per split
            mine = [n for n, i in enumerate(positions) if oof["split"][i] == split]
            decoded = decode_split(dataset[split].select([oof["row"][positions[n]] for n in mine]))
            for n, image in zip(mine, decoded, strict=True):
                images[n] = image
        return predictor.features(images)[0]

    # Rounded probabilities of exactly 0 would be -inf logits; 1e-6 is below what the file resolves.
    logits = np.log(np.clip(oof["probabilities"], 1e-6, None))
    return {"logits": logits, "labels": oof["grade"], "features": features_of(held),
            "split": f"out-of-fold predictions of {cv_folder.name}", "held_out": f"fold_{fold} (held out)",
            "described": features_of(trained), "described_labels": oof["grade"][trained],
            "described_split": f"folds other than fold_{fold}"}  # fmt: skip
