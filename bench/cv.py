"""`python -m bench cv`: what cross-validation tells that one split does not, and what it costs.

On a split tree with patient ids in the file names (the knee radiographs: ``^(\\d+)``), some patients
(`--hold-out`, stratified by grade) are held back from both splits as a test split that nothing
trains or chooses on. Then, each with the recipe (``configs/knee-cpu.yaml``) and `--budget-minutes`
of training per run or fold:

* one run trains on ``train`` and picks its best epoch on ``validation`` (the usual single split);
* `spine-hf cv` pools ``train`` + ``validation`` into `--folds` patient-grouped folds.

and it reports, all in this process:

* the single split's validation QWK with its 95 % interval (resampling patients) against the
  out-of-fold QWK over every pooled image with its interval;
* on the held-back patients: the fold ensemble, each member, the member that is the ensemble's own
  network, and the single run (QWK with intervals, the ensemble's paired gain over its own network);
* grade ranges for 90 % on the held-back patients: the ensemble calibrated on its out-of-fold
  predictions, over all grades and per grade, against the single run calibrated on validation;
* the whole `cv`'s wall time against `--folds` single runs;
* with `--distill`: a network distilled from the fold ensemble (`spine-hf cv --distill`) against the fold
  it trained beside (same rows, same epochs) on the held-back patients.

`--reuse-runs` measures again from the runs an earlier call left in the work folder, training nothing
(but the distilled network, when `--distill` asks for one that is not there yet).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from bench.data import recipe_config
from bench.report import Report

HOLD_OUT = 0.15
COVERAGE = 0.9


def bench_cv(args, report: Report, work: Path, tree: Path) -> None:
    from spine_hf.training.cross_validation import CV_METRICS_FILE, cross_validate

    print("\n== cv: out-of-fold estimates, the fold ensemble, what it costs ==", flush=True)
    work = work / "cv"
    # Phantoms carry their patients in patients.csv; real data (--data) in the file names.
    dataset = held_back_dataset(tree, work, args.group_regex if args.data else None, args.hold_out)
    budget = [f"--train.time_budget_minutes={args.budget_minutes}"]

    single_dir, cv_dir = work / "single", work / "cv"
    if not args.reuse_runs:
        from spine_hf.training.loop import train

        start = time.perf_counter()
        train(recipe_config(args, dataset, single_dir, *budget))
        single_seconds = time.perf_counter() - start
        report.say(f"single run (train -> validation): {single_seconds:.0f} s")
        start = time.perf_counter()
        cross_validate(recipe_config(args, dataset, cv_dir, *budget), folds=args.folds, seed=0)
        cv_seconds = time.perf_counter() - start
        # A budget fixes each run's epochs from its first epoch's pace, so runs differ in epochs: K single runs
        # are costed as the folds' own epochs plus K times what a single run spends outside its epochs.
        epochs = {name: sum(r["seconds"] for r in json.loads((folder / "metrics.json").read_text()))
                  for name, folder in [("single", single_dir)] + [(f"fold_{k}", cv_dir / f"fold_{k}")
                                                                  for k in range(args.folds)]}  # fmt: skip
        outside = single_seconds - epochs["single"]
        like_runs = sum(v for k, v in epochs.items() if k != "single") + args.folds * outside
        report.number("cv.seconds", {"single_run": single_seconds, "cv": cv_seconds, "epochs": epochs,
                                     "single_run_outside_epochs": outside, "k_single_runs": like_runs})  # fmt: skip
        report.ratio("cv.time_vs_single_runs", cv_seconds / like_runs, 1.05, "lower",
                     f"whole `cv` wall time / {args.folds} single runs of the folds' epochs")  # fmt: skip
    if args.distill is not None:  # the folds are done: this trains the distilled network alone
        from dataclasses import replace

        cfg = recipe_config(args, dataset, cv_dir, *budget)
        cfg = replace(cfg, train=replace(cfg.train, overwrite=False))  # the recipe's overwrite would retrain the folds
        start = time.perf_counter()
        cross_validate(cfg, folds=args.folds, seed=0, distill=args.distill)
        report.say(f"distilled network: {time.perf_counter() - start:.0f} s (nothing when an earlier call left it)")
    metrics = json.loads((cv_dir / CV_METRICS_FILE).read_text())
    compare(report, dataset, single_dir / "best", cv_dir, metrics, work, args)


def held_back_dataset(tree: Path, work: Path, group_regex: str, hold_out: float) -> Path:
    """The tree converted with patient ids, `hold_out` of its patients (stratified by grade) moved from
    train and validation into a test split (built once per work folder)."""
    import datasets

    from spine_hf.data.convert import convert_to_dataset
    from spine_hf.data.dataset_folder import load_grade_dataset
    from spine_hf.data.split import assign_parts

    out = work / "dataset"
    if (out / "dataset_dict.json").is_file():
        return out
    full = work / "converted"
    if not (full / "dataset_dict.json").is_file():
        convert_to_dataset(tree, full, overwrite=True, group_regex=group_regex)
    converted = load_grade_dataset(full)
    groups: dict[str, list[int]] = {}
    for split in ("train", "validation"):
        for patient, label in zip(converted[split]["patient"], converted[split]["label"], strict=True):
            groups.setdefault(patient, []).append(int(label))
    part = assign_parts(groups, [1 - hold_out, hold_out], seed=0)
    kept = {}
    held = []
    for split in ("train", "validation"):
        rows = converted[split]
        back = [i for i, p in enumerate(rows["patient"]) if part[p] == 1]
        kept[split] = rows.select([i for i in range(len(rows)) if part[rows["patient"][i]] == 0])
        held.append(rows.select(back))
    built = datasets.DatasetDict({**kept, "test": datasets.concatenate_datasets(held)})
    built.save_to_disk(str(out))
    return out


def _scores(probabilities: np.ndarray, labels: np.ndarray, patients: np.ndarray) -> dict:
    """QWK, accuracy, MAE with 95 % intervals resampling patients."""
    from spine_hf.predict.evaluation import bootstrap_intervals
    from spine_hf.predict.metrics import compute_grading_metrics

    point = compute_grading_metrics(probabilities.argmax(1), labels)
    intervals = bootstrap_intervals(probabilities, labels, 1000, seed=0, groups=patients)
    return {name: {"value": point[name], "ci95": intervals[name]} for name in ("qwk", "accuracy", "mae")}


def _paired_gain(a: np.ndarray, b: np.ndarray, labels: np.ndarray, patients: np.ndarray) -> dict:
    """QWK(a) - QWK(b) on the same images, with a 95 % interval resampling patients."""
    from spine_hf.predict.evaluation import resampled_indices
    from spine_hf.predict.metrics import compute_grading_metrics

    def qwk(p, index):
        return compute_grading_metrics(p[index].argmax(1), labels[index])["qwk"]

    gains = [qwk(a, index) - qwk(b, index) for index in resampled_indices(len(labels), 1000, 0, patients)]
    low, high = np.percentile(gains, [2.5, 97.5])
    everything = np.arange(len(labels))
    return {"value": qwk(a, everything) - qwk(b, everything), "ci95": [float(low), float(high)]}


def compare(report: Report, dataset: Path, single: Path, cv_dir: Path, metrics: dict, work: Path, args) -> None:
    """Everything measured from the finished single run and cross-validation (no training)."""
    from spine_hf.data.dataset_folder import decode_split, load_grade_dataset
    from spine_hf.models.conformal import coverage_report
    from spine_hf.predict.calibration import calibrate_model
    from spine_hf.predict.inference import Predictor
    from spine_hf.training.cross_validation import ENSEMBLE_DIR

    data = load_grade_dataset(dataset)
    val, test = data["validation"], data["test"]
    val_labels, test_labels = np.asarray(val["label"]), np.asarray(test["label"])
    val_patients, test_patients = np.asarray(val["patient"]), np.asarray(test["patient"])
    val_images, test_images = decode_split(val), decode_split(test)

    single_val = _scores(Predictor(single, batch_size=64).probabilities(val_images), val_labels, val_patients)
    oof = metrics["metrics"]["qwk"]
    widths = {"single_validation": np.diff(single_val["qwk"]["ci95"])[0], "out_of_fold": np.diff(oof["ci95"])[0]}
    report.say(f"single split: validation QWK {_show(single_val['qwk'])} ({len(val_labels)} images); "
               f"out of fold: {_show(oof)} ({metrics['count']} images), folds "
               f"{', '.join(f'{v:.3f}' for v in metrics['per_fold']['qwk'])}")  # fmt: skip
    report.number("cv.validation_vs_out_of_fold", {"single_validation": single_val, "widths": widths,
                  "out_of_fold": metrics["metrics"], "per_fold_qwk": metrics["per_fold"]["qwk"]})  # fmt: skip
    widths = {name: float(value) for name, value in widths.items()}
    width_ratio = widths["out_of_fold"] / widths["single_validation"] if widths["single_validation"] else None
    report.ratio("cv.interval_width_ratio", width_ratio, 0.6, "lower",
                 "width of the out-of-fold QWK's 95 % interval / the single validation split's")  # fmt: skip

    info = json.loads((cv_dir / ENSEMBLE_DIR / "ensemble.json").read_text())
    own = info["single_network"]
    on_test = {"ensemble": Predictor(cv_dir / ENSEMBLE_DIR, batch_size=64).probabilities(test_images),
               "single_run": Predictor(single, batch_size=64).probabilities(test_images)}  # fmt: skip
    for k in range(args.folds):
        on_test[f"fold_{k}"] = Predictor(cv_dir / f"fold_{k}" / "best", batch_size=64).probabilities(test_images)
    if "distilled" in metrics:
        on_test["distilled"] = Predictor(cv_dir / "distilled" / "best", batch_size=64).probabilities(test_images)
    scored = {name: _scores(p, test_labels, test_patients) for name, p in on_test.items()}
    gain = _paired_gain(on_test["ensemble"], on_test[own], test_labels, test_patients)
    best_member = max(range(args.folds), key=lambda k: scored[f"fold_{k}"]["qwk"]["value"])
    listed = ", ".join(f"{name} {s['qwk']['value']:.3f}" for name, s in scored.items())
    report.say(f"held-back patients ({len(test_labels)} images): QWK {listed}; the ensemble's own network is {own}")
    report.say(f"ensemble - its own network ({own}): QWK {gain['value']:+.3f} [{gain['ci95'][0]:+.3f}, "
               f"{gain['ci95'][1]:+.3f}]")  # fmt: skip
    report.number("cv.held_back", {"scores": scored, "own_network": own, "gain_over_own_network": gain,
                                   "best_member_on_test": f"fold_{best_member}"})  # fmt: skip
    report.ratio("cv.ensemble_qwk_gain_over_own_network", gain["value"], 0.0, "higher",
                 f"held-back QWK of the ensemble - of its own network ({own}, the best held-out fold)")  # fmt: skip
    report.ratio("cv.ensemble_qwk_gain_over_best_member", scored["ensemble"]["qwk"]["value"]
                 - scored[f"fold_{best_member}"]["qwk"]["value"], 0.0, "higher",
                 "held-back QWK of the ensemble - of the member best on the held-back patients")  # fmt: skip
    if "distilled" in metrics:
        distilled(report, metrics["distilled"], on_test, scored, test_labels, test_patients)

    ranges = {}
    for name, model, kwargs in (
        ("single_on_validation", single, {}),
        ("ensemble_oof_marginal", cv_dir / ENSEMBLE_DIR, {"per_grade": False}),  # per grade is its default
        ("ensemble_oof_per_grade", cv_dir / ENSEMBLE_DIR, {"per_grade": True}),
    ):
        out = work / "calibrated" / name
        fitted = calibrate_model(model, dataset, out, coverage=COVERAGE, overwrite=True, **kwargs)
        predictor = Predictor(out, batch_size=64)
        if predictor.grade_ranges is None:  # too few images of some grade: said, not measured
            ranges[name] = {"not_fitted": fitted["grade_ranges"]["not_fitted"]}
            report.say(f"{name:24s} not fitted: {ranges[name]['not_fitted']}")
            continue
        probabilities = predictor.probabilities(test_images)
        found = coverage_report(predictor.grade_ranges.ranges(probabilities), test_labels)
        from spine_hf.predict.evaluation import expected_calibration_error

        found["ece"] = expected_calibration_error(probabilities, test_labels)[0]
        found["temperature"] = fitted["temperature"]
        ranges[name] = found
        covered = ", ".join("-" if c is None else f"{c:.2f}" for c in found["per_grade_coverage"])
        wide = ", ".join("-" if w is None else f"{w:.2f}" for w in found["per_grade_mean_width"])
        report.say(f"{name:24s} coverage {found['coverage']:.3f}, per grade {covered}; width "
                   f"{found['mean_width']:.2f}, per grade {wide}; ECE {found['ece']:.3f}")  # fmt: skip
    report.number("cv.grade_ranges_on_held_back", ranges)
    ranges = {**ranges, **cross_fitted_ranges(report, cv_dir)}
    for name in ranges:
        seen = [c for c in ranges[name].get("per_grade_coverage", []) if c is not None]
        gap = max(abs(c - COVERAGE) for c in seen) if seen else None
        report.ratio(f"cv.per_grade_coverage_gap.{name}", gap, 0.03, "lower",
                     f"largest |coverage - {COVERAGE:.0%}| over the true grades on the held-back patients")  # fmt: skip


def distilled(report: Report, entry: dict, on_test: dict, scored: dict, labels: np.ndarray,
              patients: np.ndarray) -> None:  # fmt: skip
    """The distilled network against the fold it trained beside and against the ensemble, on the held-back
    patients: which single network serves better."""
    from spine_hf.predict.evaluation import expected_calibration_error

    fold = f"fold_{entry['fold']}"
    gains = {"over_its_fold": _paired_gain(on_test["distilled"], on_test[fold], labels, patients),
             "ensemble_over_it": _paired_gain(on_test["ensemble"], on_test["distilled"], labels, patients)}  # fmt: skip
    ece = {name: expected_calibration_error(on_test[name], labels)[0] for name in ("distilled", fold, "ensemble")}
    report.say(f"distilled (weight {entry['teacher_weight']}, {entry['epochs']} epochs on {fold}'s rows): held-back "
               f"QWK {_show(scored['distilled']['qwk'])} against {fold} {_show(scored[fold]['qwk'])}: "
               f"{gains['over_its_fold']['value']:+.3f} [{gains['over_its_fold']['ci95'][0]:+.3f}, "
               f"{gains['over_its_fold']['ci95'][1]:+.3f}]; on {fold}'s held-out rows "
               f"{entry['held_out_qwk']['distilled']:.3f} against {entry['held_out_qwk'][fold]:.3f}, so the own "
               f"network is {'the distilled one' if entry['own_network'] else fold}; ECE "
               + ", ".join(f"{name} {value:.3f}" for name, value in ece.items()))  # fmt: skip
    report.number("cv.distilled", {**entry, "held_back": {"distilled": scored["distilled"], fold: scored[fold]},
                                   "gains": gains, "ece": ece})  # fmt: skip
    report.ratio("cv.distilled_qwk_gain_over_its_fold", gains["over_its_fold"]["value"], 0.0, "higher",
                 f"held-back QWK of the distilled network - of {fold}, same rows, same epochs")  # fmt: skip


def cross_fitted_ranges(report: Report, cv_dir: Path) -> dict:
    """Both kinds of grade ranges fitted on the out-of-fold predictions of all folds but one and measured on
    that fold's, for each fold: the method itself on thousands of images, without the ensemble."""
    from scipy.special import softmax

    from spine_hf.models.conformal import coverage_report, fit_grade_ranges
    from spine_hf.predict.calibration import fit_temperature
    from spine_hf.predict.out_of_fold import read_oof_file

    oof = read_oof_file(cv_dir)
    logits, grades, folds = np.log(np.clip(oof["probabilities"], 1e-6, None)), oof["grade"], oof["fold"]
    found = {}
    for per_grade in (False, True):
        name = f"cross_fitted_oof_{'per_grade' if per_grade else 'marginal'}"
        chosen = np.zeros((len(grades), 2), dtype=np.int64)
        try:
            for fold in np.unique(folds):
                fit, held = folds != fold, folds == fold
                probabilities = softmax(logits / fit_temperature(logits[fit], grades[fit]), axis=1)
                ranges = fit_grade_ranges(probabilities[fit], grades[fit], COVERAGE, "folds", per_grade=per_grade)
                chosen[held] = ranges.ranges(probabilities[held])
        except ValueError as err:  # too few images of a grade in the other folds: said, not measured
            found[name] = {"not_fitted": str(err)}
            report.say(f"{name:24s} not fitted: {err}")
            continue
        found[name] = coverage_report(chosen, grades)
        covered = ", ".join(f"{c:.2f}" for c in found[name]["per_grade_coverage"])
        report.say(f"{name:24s} coverage {found[name]['coverage']:.3f}, per grade {covered}; width "
                   f"{found[name]['mean_width']:.2f} (fitted on the other folds' out-of-fold predictions)")  # fmt: skip
    report.number("cv.grade_ranges_cross_fitted", found)
    return found


def _show(entry: dict) -> str:
    return f"{entry['value']:.3f} [{entry['ci95'][0]:.3f}, {entry['ci95'][1]:.3f}]"


def bench_audit(args, report: Report, work: Path, tree: Path) -> None:
    """The label audit's precision and recall at finding labels moved to a neighbouring grade."""
    from spine_hf.training.audit import AUDIT_CSV, audit_labels
    from spine_hf.training.cross_validation import cross_validate

    print(f"\n== audit: {args.flip:.0%} of the pool's labels moved to a neighbouring grade, found again ==", flush=True)
    work = work / "cv"
    dataset = held_back_dataset(tree, work, args.group_regex if args.data else None, args.hold_out)
    flipped_data, flipped = flipped_copy(dataset, work / "flipped" / "dataset", args.flip)
    cv_dir = work / "flipped" / "cv"
    start = time.perf_counter()
    if not args.reuse_runs:
        budget = f"--train.time_budget_minutes={args.budget_minutes}"
        cross_validate(recipe_config(args, flipped_data, cv_dir, budget), folds=args.folds, seed=0)
    seconds = time.perf_counter() - start
    audited = audit_labels(cv_dir, work / "flipped" / "audit", show=100, overwrite=True)
    import csv

    with (audited.out / AUDIT_CSV).open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    top = rows[: round(args.flip * len(rows))]
    hits = sum(row["file"] in flipped for row in top)
    marked = [row for row in rows if row["flagged"] == "True"]
    marked_hits = sum(row["file"] in flipped for row in marked)
    found = {"images": len(rows), "flipped": len(flipped), "top": len(top), "top_hits": hits,
             "precision_top": hits / max(len(top), 1), "recall_top": hits / max(len(flipped), 1),
             "flagged": len(marked), "flagged_hits": marked_hits,
             "precision_flagged": marked_hits / max(len(marked), 1),
             "recall_flagged": marked_hits / max(len(flipped), 1),
             "cv_seconds": seconds}  # fmt: skip
    report.say(f"{len(flipped)} of {len(rows)} labels moved; top {len(top)}: {hits} of them (precision "
               f"{found['precision_top']:.2f}, recall {found['recall_top']:.2f}); cleanlab flags {len(marked)}: "
               f"{marked_hits} of them")  # fmt: skip
    report.number("audit", found)
    report.ratio("audit.precision_top", found["precision_top"], 0.5, "higher",
                 f"share of the audit's top {args.flip:.0%} that are moved labels")  # fmt: skip
    report.ratio("audit.recall_top", found["recall_top"], 0.5, "higher",
                 f"share of the moved labels in the audit's top {args.flip:.0%}")  # fmt: skip


def flipped_copy(dataset: Path, out: Path, share: float) -> tuple[Path, set[str]]:
    """A copy of `dataset` whose train and validation splits have `share` of their labels moved one grade
    up or down (seeded; Healthy only up, Severe only down); also the moved images' ``split/file`` names."""
    import datasets

    from spine_hf.data.dataset_folder import load_grade_dataset

    source = load_grade_dataset(dataset)
    rng = np.random.default_rng(0)
    pooled = [(split, i) for split in ("train", "validation") for i in range(len(source[split]))]
    chosen = {pooled[i] for i in rng.choice(len(pooled), round(share * len(pooled)), replace=False)}
    moved, parts = set(), {}
    for split, rows in source.items():
        labels = np.asarray(rows["label"])
        if split != "test":
            for i in (i for s, i in chosen if s == split):
                step = 1 if labels[i] == 0 else -1 if labels[i] == 4 else int(rng.choice([-1, 1]))
                labels[i] += step
                moved.add(f"{split}/{rows['file'][i]}")
        feature = rows.features["label"]
        parts[split] = rows.remove_columns("label").add_column("label", labels.tolist()).cast_column("label", feature)
    if not (out / "dataset_dict.json").is_file():
        datasets.DatasetDict(parts).save_to_disk(str(out))
    return out, moved
