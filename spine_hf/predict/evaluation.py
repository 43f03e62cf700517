"""`spine-hf evaluate`: how good a saved model is on a split, with uncertainty, as files.

Writes to the output folder:

* ``metrics.json``: accuracy, balanced accuracy, macro-F1, QWK, MAE, per-grade precision and
  recall, each with a bootstrap 95 % interval (images resampled with replacement); the ROC AUC of
  the clinically used cut "grade >= 2" from P(grade >= 2); expected calibration error (ECE);
* ``confusion_matrix.png`` and ``reliability.png`` (with ECE);
* ``predictions.csv``: file, true grade, predicted grade and the five probabilities per image.

For a model folder with conformal grade ranges (`spine-hf calibrate`), also the ranges' empirical
coverage and mean width, overall and per true grade (in metrics.json, ``grade_ranges.png``, and each
image's range in predictions.csv); with a referral, the share of images referred as unlike the
training radiographs (and each image's score). The ranges are fitted without flip TTA; with it, the
coverage measured here is of the ranges `predict --flip-tta` shows.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from spine_hf.data.dataset_folder import decode_split, load_grade_split
from spine_hf.grades import GRADE_NAMES
from spine_hf.models.conformal import coverage_report
from spine_hf.outputs import check_new_output, staged_folder
from spine_hf.predict.inference import Predictor
from spine_hf.predict.metrics import compute_grading_metrics

SCALARS = ("accuracy", "balanced_accuracy", "macro_f1", "qwk", "mae")
ECE_BINS = 10


def expected_calibration_error(probabilities: np.ndarray, references: np.ndarray, bins: int = ECE_BINS):
    """ECE over equal-width confidence bins; also returns (confidence, accuracy, count) per bin."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == references
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    table, ece = [], 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            conf, acc = float(confidence[mask].mean()), float(correct[mask].mean())
            ece += mask.mean() * abs(conf - acc)
            table.append((conf, acc, int(mask.sum())))
        else:
            table.append((float((edges[b] + edges[b + 1]) / 2), float("nan"), 0))
    return float(ece), table


def severe_cut_auc(probabilities: np.ndarray, references: np.ndarray) -> float:
    """ROC AUC of P(grade >= 2) for "grade >= 2"; NaN when only one side of the cut is present."""
    positive = references >= 2
    if positive.all() or not positive.any():
        return float("nan")
    return float(roc_auc_score(positive, probabilities[:, 2:].sum(axis=1)))


def resampled_indices(count: int, rounds: int, seed: int, groups: np.ndarray | None = None) -> Iterator[np.ndarray]:
    """`rounds` bootstrap resamples of the indices of `count` images: images drawn with replacement, or with
    `groups` (a patient id per image) patients, each with all of their images."""
    rng = np.random.default_rng(seed)
    members = None
    if groups is not None:
        _, inverse = np.unique(np.asarray(groups), return_inverse=True)
        order = np.argsort(inverse, kind="stable")
        members = np.split(order, np.cumsum(np.bincount(inverse))[:-1])  # each patient's image indices
    for _ in range(rounds):
        if members is None:
            yield rng.integers(0, count, count)
        else:
            yield np.concatenate([members[i] for i in rng.integers(0, len(members), len(members))])


def bootstrap_intervals(probabilities: np.ndarray, references: np.ndarray, rounds: int, seed: int,
                        groups: np.ndarray | None = None) -> dict:  # fmt: skip
    """95 % percentile intervals for every scalar metric, per-grade precision/recall and the AUC.

    Images are resampled with replacement; with `groups` (a patient id per image), patients are, each
    with all of their images, since images of one patient are not independent of each other."""
    predictions = probabilities.argmax(axis=1)
    samples: dict[str, list] = {}
    for index in resampled_indices(len(references), rounds, seed, groups):
        metrics = compute_grading_metrics(predictions[index], references[index])
        for name in SCALARS:
            samples.setdefault(name, []).append(metrics[name])
        for name in ("per_grade_precision", "per_grade_recall"):
            samples.setdefault(name, []).append(metrics[name])
        samples.setdefault("auc_grade_ge_2", []).append(severe_cut_auc(probabilities[index], references[index]))
    intervals = {}
    for name, values in samples.items():
        array = np.asarray(values, dtype=np.float64)
        low, high = np.nanpercentile(array, [2.5, 97.5], axis=0)
        intervals[name] = [np.round(low, 4).tolist(), np.round(high, 4).tolist()]
    return intervals


def evaluate_model(
    model: str | os.PathLike,
    data: str | os.PathLike,
    out: str | os.PathLike,
    *,
    split: str = "test",
    flip_tta: bool = False,
    bootstrap: int = 1000,
    seed: int = 0,
    batch_size: int = 32,
    overwrite: bool = False,
) -> dict:
    """Score `model` on `split` of a converted dataset and write the files listed above; returns metrics.json.

    `out` must be new or empty unless `overwrite`; its files appear together, once all are written.
    """
    check_new_output(out, overwrite)
    rows = load_grade_split(data, split)
    predictor = Predictor(model, batch_size=batch_size)
    images = decode_split(rows)
    outputs = predictor.outputs(images, flip_tta=flip_tta, features=predictor.referral is not None)
    probabilities = outputs.probabilities
    references = np.asarray(rows["label"], dtype=np.int64)
    files = list(rows["file"]) if "file" in rows.column_names else [str(i) for i in range(len(rows))]
    predictions = probabilities.argmax(axis=1)
    point = compute_grading_metrics(predictions, references)
    intervals = bootstrap_intervals(probabilities, references, bootstrap, seed)
    ece, bins = expected_calibration_error(probabilities, references)
    result = {
        "model": str(model),
        "data": str(data),
        "split": split,
        "count": len(references),
        "flip_tta": flip_tta,
        "bootstrap_rounds": bootstrap,
        "metrics": {name: {"value": point[name], "ci95": intervals[name]} for name in SCALARS},
        "per_grade": {
            name: {"value": point[name], "ci95": intervals[name]}
            for name in ("per_grade_precision", "per_grade_recall")
        },
        "auc_grade_ge_2": {"value": severe_cut_auc(probabilities, references), "ci95": intervals["auc_grade_ge_2"]},
        "ece": ece,
        "confusion_matrix": point["confusion_matrix"],
    }
    columns = {}  # extra predictions.csv columns, per image
    if predictor.grade_ranges is not None:
        ranges = predictor.grade_ranges.ranges(probabilities)  # what `predict` shows, with or without TTA
        result["grade_ranges"] = {"nominal_coverage": predictor.grade_ranges.coverage,
                                  **coverage_report(ranges, references)}  # fmt: skip
        columns |= {"range_low": ranges[:, 0].tolist(), "range_high": ranges[:, 1].tolist()}
    if predictor.referral is not None:
        scores = predictor.referral.scores(outputs.features)
        referred = predictor.referral.refer(scores)
        result["referral"] = {
            "threshold": predictor.referral.threshold,
            "rate": predictor.referral.rate,
            "referred_fraction": float(referred.mean()),
            "referred_count": int(referred.sum()),
        }
        columns |= {"ood_score": [f"{v:.4f}" for v in scores], "in_distribution": (~referred).tolist()}
    with staged_folder(out, overwrite) as staging:
        (staging / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
        with (staging / "predictions.csv").open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["file", "true_grade", "predicted_grade", *(f"p_{name}" for name in GRADE_NAMES),
                             *columns])  # fmt: skip
            for i, (file, ref, pred, probs) in enumerate(
                zip(files, references, predictions, probabilities, strict=True)
            ):
                writer.writerow([file, int(ref), int(pred), *(f"{p:.6f}" for p in probs),
                                 *(values[i] for values in columns.values())])  # fmt: skip
        matrix = np.asarray(point["confusion_matrix"])
        plot_confusion(matrix, staging / "confusion_matrix.png", f"{split}: {len(references)} images")
        plot_reliability(bins, ece, staging / "reliability.png")
        if "grade_ranges" in result:
            plot_grade_ranges(result["grade_ranges"], staging / "grade_ranges.png")
    return result


def plot_confusion(matrix: np.ndarray, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6.6, 5.6), dpi=120, layout="constrained")
    rows = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    image = axes.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    labels = [f"{i} {name}" for i, name in enumerate(GRADE_NAMES)]
    axes.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
    axes.set_yticks(range(len(labels)), labels)
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            colour = "white" if rows[i, j] > 0.5 else "black"
            axes.text(j, i, f"{matrix[i, j]}\n{rows[i, j]:.0%}", ha="center", va="center", color=colour, fontsize=9)
    axes.set_xlabel("predicted grade")
    axes.set_ylabel("true grade")
    axes.set_title(f"Confusion matrix ({title})")
    figure.colorbar(image, ax=axes, fraction=0.046, label="share of the true grade")
    figure.savefig(path)
    plt.close(figure)


def plot_reliability(bins: list[tuple[float, float, int]], ece: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(5.6, 5.2), dpi=120)
    width = 1.0 / len(bins)
    centres = (np.arange(len(bins)) + 0.5) * width
    accuracy = np.array([acc if count else 0.0 for _, acc, count in bins])
    axes.bar(centres, accuracy, width=width * 0.9, color="#4878d0", edgecolor="black", label="accuracy")
    axes.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    for centre, (_, acc, count) in zip(centres, bins, strict=True):
        if count:
            axes.text(centre, min(acc + 0.02, 0.97), str(count), ha="center", fontsize=7)
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1)
    axes.set_xlabel("confidence (top probability)")
    axes.set_ylabel("accuracy")
    axes.set_title(f"Reliability (ECE {ece:.3f}; numbers = images per bin)")
    axes.legend(loc="upper left")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def plot_grade_ranges(report: dict, path: Path) -> None:
    """Coverage and mean width of the grade ranges per true grade, beside the nominal coverage."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4.4), dpi=120, layout="constrained")
    labels = [f"{i} {name}" for i, name in enumerate(GRADE_NAMES)]
    counts = report["per_grade_count"]
    coverage = [np.nan if c is None else c for c in report["per_grade_coverage"]]
    width = [np.nan if w is None else w for w in report["per_grade_mean_width"]]
    left.bar(labels, coverage, color="#4878d0", edgecolor="black")
    left.axhline(report["nominal_coverage"], ls="--", color="gray", label=f"nominal {report['nominal_coverage']:.0%}")
    for x, (value, count) in enumerate(zip(coverage, counts, strict=True)):
        if count:
            left.text(x, min(value + 0.02, 1.02), f"{value:.0%}\nn={count}", ha="center", fontsize=8)
    left.set_ylim(0, 1.1)
    left.set_ylabel("share of images whose range holds the true grade")
    left.set_title(f"Coverage (overall {report['coverage']:.1%})")
    left.legend(loc="lower left")
    right.bar(labels, width, color="#ee854a", edgecolor="black")
    right.set_ylim(0, 5)
    right.set_ylabel("mean range width (grades)")
    right.set_title(f"Width (overall {report['mean_width']:.2f} grades)")
    for axes in (left, right):
        axes.set_xlabel("true grade")
        axes.tick_params(axis="x", rotation=30)
    figure.savefig(path)
    plt.close(figure)
