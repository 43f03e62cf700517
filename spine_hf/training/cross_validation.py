"""`spine-hf cv`: K-fold cross-validation over the training and validation images, grouped by patient.

    spine-hf cv --config_path configs/knee-cpu.yaml --folds 5 [--seed 42] [--fold K] [--distill [W]] [--key=value ...]
    accelerate launch -m spine_hf.cv --config_path FILE --folds 5      # the same on N processes

One split into training and validation cannot tell a better model from a luckier split on a few hundred
images. Here the two splits are pooled and cut into K folds by patient (`folds`); each fold is held out
once while an ordinary run trains on the others and picks its best epoch on it. Every pooled image thus
gets exactly one prediction from the model that never saw it (out-of-fold), and the metrics over all of
them, with intervals from resampling patients, are what `cv_metrics.json` reports beside each fold's
own value and their spread. The test split is never read.

``train.output_dir`` becomes the cross-validation folder:

* ``folds.csv`` (which image is in which fold) and ``cv.json`` (the settings; a later run must match);
* ``fold_K/``: an ordinary run folder (`checkpoints`, ``best/``, ``metrics.json``, where the
  "validation" metrics are those of the held-out fold) plus ``held_out_predictions.csv``, the best
  model's probabilities for the fold's held-out images, as `Predictor` computes them;
* once every fold is done: ``oof_predictions.csv`` (file, patient, fold, grade, predicted grade,
  five probabilities), ``cv_metrics.json`` and ``ensemble/``, the K best models as one model folder
  (`models.folder.save_ensemble`) whose own network, the one `pipeline()` and timm load, is the fold
  with the highest held-out QWK;
* with ``--distill``: ``distilled/``, a run folder like a fold's, of one network that learnt from the
  out-of-fold probabilities beside the labels (`distill_network`); it replaces that fold as the
  ensemble's own network only where it grades the fold's held-out images better.

Folds run one after another in the same `accelerate` loop as `spine-hf train`, on one CPU, one GPU or
many, reading the splits' decoded caches (decoded once for all folds). A run that stops continues the
fold it was on from its latest checkpoint; finished folds are never trained again. ``--fold K`` trains
one fold alone, so folds can run side by side (one `accelerate launch` per GPU group or machine, the
fold folders gathered in one place afterwards); a plain `cv` then trains only what is missing and
gathers the results.
"""

from __future__ import annotations

import csv
import io
import json
import math
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from spine_hf.config import Config, ConfigError, config_to_yaml
from spine_hf.data.dataset_folder import decode_split, load_grade_dataset
from spine_hf.data.folds import FOLDS_FILE, Folds, make_folds
from spine_hf.grades import NUM_GRADES
from spine_hf.outputs import publish_file
from spine_hf.predict.out_of_fold import OOF_FILE, PROBABILITY_COLUMNS
from spine_hf.training.checkpoints import BEST_DIR, CHECKPOINTS_DIR, CONFIG_FILE, RESULTS_FILE, STATE_FILE

CV_FILE = "cv.json"
CV_METRICS_FILE = "cv_metrics.json"
HELD_OUT_FILE = "held_out_predictions.csv"
ENSEMBLE_DIR = "ensemble"
DISTILLED_DIR = "distilled"
DISTILL_FILE = "distill.json"
# The metrics reported over all images and per fold.
SCALARS = ("qwk", "accuracy", "balanced_accuracy", "macro_f1", "mae")


@dataclass
class CVResult:
    """What `cross_validate` did and found."""

    out: Path
    folds: Folds
    # Folds trained (or continued) by this call, and folds still missing after it.
    trained: list[int]
    missing: list[int]
    # cv_metrics.json, once every fold is done.
    metrics: dict | None = None


def fold_folder(out: Path, fold: int) -> Path:
    return out / f"fold_{fold}"


def cross_validate(cfg: Config, folds: int = 5, seed: int = 42, only: int | None = None,
                   group_regex: str | None = None, distill: float | None = None) -> CVResult:  # fmt: skip
    """Train the folds of `cfg`'s training + validation splits that are not done yet (only fold `only` when
    given), then, when all are done, write the out-of-fold predictions, their metrics and the ensemble.
    With `distill` (the teacher's weight in the loss, 0..1), also train a network distilled from the
    out-of-fold probabilities (`distill_network`).

    Raises:
        ConfigError: settings cross-validation cannot use, or a folder holding another cross-validation.
        ValueError: too few patients for the folds, or data that does not fit.
    """
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    out = Path(cfg.train.output_dir)
    if cfg.train.resume:
        raise ConfigError("cv continues unfinished folds by itself: leave train.resume empty")
    if cfg.data.max_samples:
        raise ConfigError("data.max_samples cuts the splits short; cross-validation needs every image (leave it 0)")
    dataset = load_grade_dataset(cfg.data.dataset)
    pool = (cfg.data.train_split, cfg.data.eval_split)
    for split in pool:
        if split not in dataset:
            raise ConfigError(f"{cfg.data.dataset} has no split {split!r} (it has {sorted(dataset)})")
    plan = make_folds(dataset, pool, folds, seed, group_regex)
    if only is not None and not 0 <= only < folds:
        raise ConfigError(f"--fold {only}: the folds are numbered 0 to {folds - 1}")
    if distill is not None and not 0 < distill <= 1:
        raise ConfigError(f"--distill {distill}: the teacher's weight in the loss must be in (0, 1]")
    # The processes `accelerate launch` started (one without it); on CPUs they are told apart as the
    # Accelerator tells them (a bare PartialState ignores ACCELERATE_USE_CPU and would see one process).
    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))
    if state.is_main_process:
        _claim(out, plan, cfg, only)
    state.wait_for_everyone()
    trained = []
    for fold in range(folds) if only is None else [only]:
        folder = fold_folder(out, fold)
        if not cfg.train.overwrite and (folder / HELD_OUT_FILE).is_file():
            continue
        if cfg.train.overwrite or not (folder / RESULTS_FILE).is_file():
            _train_fold(cfg, plan, fold, folder)
            trained.append(fold)
        if state.is_main_process:
            write_held_out(folder, plan, fold, dataset, cfg.train.eval_batch_size)
        state.wait_for_everyone()
    missing = [fold for fold in range(folds) if not (fold_folder(out, fold) / HELD_OUT_FILE).is_file()]
    result = CVResult(out, plan, trained, missing)
    if not missing:
        if state.is_main_process:
            result.metrics = gather(out, plan)
        state.wait_for_everyone()
        earlier = out / DISTILLED_DIR / DISTILL_FILE
        if distill is None and earlier.is_file():  # distilled before: keep it (finished, it trains nothing)
            distill = float(json.loads(earlier.read_text(encoding="utf-8"))["teacher_weight"])
        if distill is not None:
            result.metrics = distill_network(cfg, out, plan, dataset, distill, state)
        if state.is_main_process:  # once, with the own network chosen
            save_fold_ensemble(out, plan, cfg, result.metrics)
        state.wait_for_everyone()
    state.destroy_process_group()
    return result


def _settings(plan: Folds, cfg: Config) -> dict:
    """What a cross-validation folder was made with; a later run in it must use the same."""
    # Not where the folder is (it may be moved or copied) nor how this call treats it.
    neutral = replace(cfg, train=replace(cfg.train, output_dir="", overwrite=False, resume=""))
    return {"folds": plan.count, "seed": plan.seed, "grouping": plan.grouping, "pool": list(dict.fromkeys(
            row.split for row in plan.rows)), "config": config_to_yaml(neutral)}  # fmt: skip


def _claim(out: Path, plan: Folds, cfg: Config, only: int | None) -> None:
    """Start or continue the cross-validation folder `out` (main process): its settings and folds must match,
    unless train.overwrite starts it afresh (then every fold trained from now on is trained anew)."""
    settings = _settings(plan, cfg)
    file = out / CV_FILE
    earlier = json.loads(file.read_text(encoding="utf-8")) if file.is_file() else None
    changed = [key for key in settings if earlier is not None and earlier.get(key) != settings[key]]
    if changed and not cfg.train.overwrite:
        raise ConfigError(
            f"{out} holds a cross-validation made with other {', '.join(changed)}: continue it with its own "
            "settings, start it afresh with --train.overwrite=true, or choose another --train.output_dir"
        )
    if changed and only is not None:
        raise ConfigError(f"--fold {only} with --train.overwrite=true and other {', '.join(changed)} would leave the "
                          "other folds trained the old way: start afresh without --fold")  # fmt: skip
    if earlier is None and out.is_dir() and any(out.iterdir()):
        raise ConfigError(f"{out} is not empty and holds no cross-validation: choose another --train.output_dir")
    if cfg.train.overwrite:  # what was gathered from the earlier folds goes
        for name in (FOLDS_FILE, OOF_FILE, CV_METRICS_FILE):
            (out / name).unlink(missing_ok=True)
        shutil.rmtree(out / ENSEMBLE_DIR, ignore_errors=True)
        shutil.rmtree(out / DISTILLED_DIR, ignore_errors=True)  # it learnt from the earlier folds
    plan.check_or_write(out)
    _write_json(file, settings)


def _train_fold(cfg: Config, plan: Folds, fold: int, folder: Path, teacher=None, teacher_weight: float = 0.0) -> None:
    """Train one fold in `folder`: continued from its latest checkpoint, else from the start (with `teacher`,
    probabilities for the fold's training rows, learning from them too: `loop.prepare`)."""
    from spine_hf.training.loop import fit, prepare

    started = any((folder / CHECKPOINTS_DIR).glob(f"step_*/{STATE_FILE}"))
    earlier = (folder / CONFIG_FILE).exists() or (folder / BEST_DIR).exists()
    resume = "true" if started and not cfg.train.overwrite else ""
    fold_cfg = replace(
        cfg,
        data=replace(cfg.data, test_split=""),  # the test split is never read
        train=replace(cfg.train, output_dir=str(folder), resume=resume, overwrite=not resume and earlier),
        hub=replace(cfg.hub, repo_id=""),  # folds are not published one by one
    )
    run = prepare(fold_cfg, plan.fold_rows(fold), teacher, teacher_weight)
    try:
        fit(run)
    finally:
        for tracker in run.accelerator.trackers:  # the processes stay up for the next fold
            tracker.finish()


def write_held_out(folder: Path, plan: Folds, fold: int, dataset, batch_size: int) -> Path:
    """The best model's probabilities for the fold's held-out images (what `Predictor` gives, in fp32), as
    ``held_out_predictions.csv`` in `folder`, written whole or not at all."""
    from spine_hf.predict.inference import Predictor

    positions = plan.held_out(fold)
    predictor = Predictor(folder / BEST_DIR, batch_size=batch_size)
    probabilities = np.zeros((len(positions), NUM_GRADES), dtype=np.float32)
    for split in dict.fromkeys(plan.rows[i].split for i in positions):
        chosen = [n for n, i in enumerate(positions) if plan.rows[i].split == split]
        rows = dataset[split].select([plan.rows[positions[n]].index for n in chosen])
        probabilities[chosen] = predictor.probabilities(decode_split(rows))
    lines = [[*_row_cells(plan, i), *(f"{p:.6f}" for p in probs)] for i, probs in zip(positions, probabilities,
                                                                                       strict=True)]  # fmt: skip
    return _write_csv(folder / HELD_OUT_FILE, ["file", "patient", "fold", "grade", *PROBABILITY_COLUMNS], lines)


def _row_cells(plan: Folds, position: int) -> list:
    row = plan.rows[position]
    return [row.name, row.patient, plan.fold[position], row.grade]


def _write_csv(path: Path, header: list[str], lines: list[list]) -> Path:
    """The CSV at `path`, whole or not at all."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(lines)
    publish_file(path, text.getvalue().encode("utf-8", errors="surrogateescape"))
    return path


def _write_json(path: Path, data: dict) -> None:
    publish_file(path, (json.dumps(data, indent=2) + "\n").encode("utf-8"))


def read_held_out(folder: Path, plan: Folds, fold: int) -> np.ndarray:
    """The probabilities in `folder`'s held-out file (a fold's, or the distilled network's) for the images fold
    `fold` holds out: N x 5, in the order of `plan.held_out(fold)`.

    Raises:
        ValueError: an image missing, predicted twice or not one the fold holds out.
    """
    positions = plan.held_out(fold)
    index = {plan.rows[i].name: n for n, i in enumerate(positions)}
    found = np.full((len(positions), NUM_GRADES), np.nan)
    path = folder / HELD_OUT_FILE
    again = f"train it again (for a fold: --fold {fold} --train.overwrite=true)"
    with path.open(newline="", encoding="utf-8", errors="surrogateescape") as handle:
        for line in csv.DictReader(handle):
            n = index.get(line["file"])
            if n is None or int(line["fold"]) != fold or not np.isnan(found[n, 0]):
                raise ValueError(f"{path}: {line['file']} is not an image fold {fold} holds out once; {again}")
            found[n] = [float(line[column]) for column in PROBABILITY_COLUMNS]
    lost = np.isnan(found[:, 0])
    if lost.any():
        raise ValueError(f"{path}: {int(lost.sum())} images fold {fold} holds out have no prediction, e.g. "
                         f"{plan.rows[positions[int(np.argmax(lost))]].name}; {again}")  # fmt: skip
    return found


def read_oof(out: Path, plan: Folds) -> np.ndarray:
    """Every pooled image's out-of-fold probabilities (N x 5, in pool order) from the folds' held-out files.

    Raises:
        ValueError: an image missing, predicted twice or by the wrong fold.
    """
    probabilities = np.zeros((len(plan.rows), NUM_GRADES))
    for fold in range(plan.count):  # every pooled image is in exactly one fold
        probabilities[plan.held_out(fold)] = read_held_out(fold_folder(out, fold), plan, fold)
    return probabilities


def gather(out: Path, plan: Folds, bootstrap: int = 1000) -> dict:
    """Write ``oof_predictions.csv`` and ``cv_metrics.json`` from the finished folds (`save_fold_ensemble`
    writes ``ensemble/`` from them, once any distilled network has been weighed too)."""
    from spine_hf.predict.evaluation import bootstrap_intervals, expected_calibration_error, severe_cut_auc
    from spine_hf.predict.metrics import compute_grading_metrics

    probabilities = read_oof(out, plan)
    grades = np.array([row.grade for row in plan.rows])
    patients = np.array([row.patient for row in plan.rows])
    fold_of = np.asarray(plan.fold)
    predicted = probabilities.argmax(axis=1)
    lines = [[*_row_cells(plan, i), int(predicted[i]), *(f"{p:.6f}" for p in probabilities[i])]
             for i in range(len(plan.rows))]  # fmt: skip
    _write_csv(out / OOF_FILE, ["file", "patient", "fold", "grade", "predicted_grade", *PROBABILITY_COLUMNS], lines)
    point = compute_grading_metrics(predicted, grades)
    intervals = bootstrap_intervals(probabilities, grades, bootstrap, seed=0, groups=patients)
    per_fold = {name: [] for name in SCALARS}
    for fold in range(plan.count):
        mine = fold_of == fold
        scores = compute_grading_metrics(predicted[mine], grades[mine])
        for name in SCALARS:
            per_fold[name].append(scores[name])
    metrics = {
        "folds": plan.count,
        "seed": plan.seed,
        "grouping": plan.grouping,
        "count": len(grades),
        "patients": len(set(patients.tolist())),
        "bootstrap": {"rounds": bootstrap, "resampled": "patients, each with all of their images"},
        "metrics": {name: {"value": point[name], "ci95": intervals[name]} for name in SCALARS},
        "auc_grade_ge_2": {"value": severe_cut_auc(probabilities, grades), "ci95": intervals["auc_grade_ge_2"]},
        "ece": expected_calibration_error(probabilities, grades)[0],
        "confusion_matrix": point["confusion_matrix"],
        "per_fold": per_fold,
        "fold_spread": {name: _spread(values) for name, values in per_fold.items()},
        "fold_images": plan.table(),
        "fold_patients": plan.patients_per_fold(),
        "warnings": plan.warnings,
    }
    single = int(np.argmax(per_fold["qwk"]))
    metrics["ensemble"] = {"folder": ENSEMBLE_DIR, "members": plan.count, "single_network": f"fold_{single}",
                           "single_network_fold": single,
                           "single_network_chosen_by": "the highest held-out QWK of the folds"}  # fmt: skip
    _write_json(out / CV_METRICS_FILE, metrics)
    return metrics


def distill_network(cfg: Config, out: Path, plan: Folds, dataset, weight: float, state) -> dict:
    """Train ``distilled/`` (or continue it, or find it finished): one network that learns from the labels and,
    with `weight`, from the out-of-fold probabilities, which for every training image come from the fold model
    that did not see it (the members' probabilities on their own training images mostly repeat the labels).
    It trains on the rows of the fold that is the ensemble's own network, for as many epochs as that fold's
    schedule had, and picks its best epoch on the same held-out rows: the two differ only in the teacher.
    It becomes the ensemble's own network, the one `pipeline()` and timm load, only if it grades those
    held-out rows better (QWK); the ensemble's members and mean stay the folds'. Returns cv_metrics.json,
    with a "distilled" entry. Every process calls this; the main one writes."""
    metrics = json.loads((out / CV_METRICS_FILE).read_text(encoding="utf-8"))
    fold = int(metrics["ensemble"]["single_network_fold"])
    folder, teacher_of = out / DISTILLED_DIR, fold_folder(out, fold)
    epochs = _scheduled_epochs(teacher_of, cfg)
    settings = {"fold": fold, "teacher_weight": weight, "epochs": epochs,
                "teacher": "out-of-fold probabilities of the fold's training rows"}  # fmt: skip
    if state.is_main_process:
        file = folder / DISTILL_FILE
        earlier = json.loads(file.read_text(encoding="utf-8")) if file.is_file() else None
        if earlier is not None and earlier != settings:
            raise ConfigError(f"{folder} was distilled with {earlier}, not {settings}: remove that folder to distil "
                              "anew")  # fmt: skip
        folder.mkdir(parents=True, exist_ok=True)
        _write_json(file, settings)
    state.wait_for_everyone()
    if cfg.train.overwrite or not (folder / HELD_OUT_FILE).is_file():
        if cfg.train.overwrite or not (folder / RESULTS_FILE).is_file():
            teacher = read_oof(out, plan)[np.asarray(plan.fold) != fold]
            student = replace(cfg, train=replace(cfg.train, epochs=epochs, time_budget_minutes=0.0))
            _train_fold(student, plan, fold, folder, teacher, weight)
        if state.is_main_process:
            write_held_out(folder, plan, fold, dataset, cfg.train.eval_batch_size)
        state.wait_for_everyone()
    if state.is_main_process:
        from spine_hf.predict.metrics import compute_grading_metrics

        grades = np.array([plan.rows[i].grade for i in plan.held_out(fold)])
        scores = {name: compute_grading_metrics(read_held_out(path, plan, fold).argmax(1), grades)["qwk"]
                  for name, path in (("distilled", folder), (f"fold_{fold}", teacher_of))}  # fmt: skip
        chosen = scores["distilled"] > scores[f"fold_{fold}"]
        metrics["distilled"] = {**settings, "folder": DISTILLED_DIR, "held_out_qwk": scores, "own_network": chosen}
        if chosen:
            metrics["ensemble"]["single_network"] = DISTILLED_DIR
            metrics["ensemble"]["single_network_chosen_by"] = (
                f"distilled from the fold ensemble; it graded fold_{fold}'s held-out images better than fold_{fold} "
                f"(QWK {scores['distilled']:.4f} against {scores[f'fold_{fold}']:.4f})")  # fmt: skip
        _write_json(out / CV_METRICS_FILE, metrics)
    state.wait_for_everyone()
    return json.loads((out / CV_METRICS_FILE).read_text(encoding="utf-8"))


def _scheduled_epochs(folder: Path, cfg: Config) -> int:
    """The epochs a finished run's schedule had (a time budget chooses them): from its results, else from its
    latest checkpoint, else train.epochs."""
    results = json.loads((folder / RESULTS_FILE).read_text(encoding="utf-8"))
    if results.get("epochs"):
        return int(results["epochs"])
    states = sorted((folder / CHECKPOINTS_DIR).glob(f"step_*/{STATE_FILE}"))
    if states:
        found = json.loads(states[-1].read_text(encoding="utf-8")).get("epochs")
        if found:
            return int(found)
    return cfg.train.epochs


def _spread(values: list[float]) -> dict:
    array = np.asarray(values, dtype=np.float64)
    std = float(array.std(ddof=1)) if len(array) > 1 else math.nan
    return {"mean": float(array.mean()), "std": std, "min": float(array.min()), "max": float(array.max())}


def save_fold_ensemble(out: Path, plan: Folds, cfg: Config, metrics: dict) -> Path:
    """``out/ensemble``: every fold's best model as one folder; its own network is the one cv_metrics' "ensemble"
    entry names (a fold, itself a member, or the distilled network, outside the mean)."""
    from spine_hf.models.build import resolve_library
    from spine_hf.models.card import ensemble_card
    from spine_hf.models.folder import save_ensemble

    members = {f"fold_{fold}": fold_folder(out, fold) / BEST_DIR for fold in range(plan.count)}
    entry = metrics["ensemble"]
    single = entry["single_network"]
    card = ensemble_card(cfg, metrics, resolve_library(cfg.model), single, entry["single_network_chosen_by"])
    info = {"combine": "mean of the members' probabilities", **{key: entry[key] for key in (
            "single_network", "single_network_fold", "single_network_chosen_by")},
            "out_of_fold": {name: metrics["metrics"][name] for name in SCALARS}}  # fmt: skip
    own = out / DISTILLED_DIR / BEST_DIR if single == DISTILLED_DIR else None
    return save_ensemble(members, single, out / ENSEMBLE_DIR, card, info, own=own)
