"""`python -m bench shapes`: which input shape grades tall films best, by out-of-fold QWK at the same time budget.

Three arms of `spine-hf cv` with `configs/spine-cpu.yaml` and `--model` on the same folds (the same dataset,
patients and seed): the films squashed into a square of S x S pixels, the films' median aspect at about the
same pixel count (`model.aspect: data`), and that aspect at about 2.5 times the pixels. Each fold trains
under the same time budget, so a larger input pays for its pixels in epochs. Reported: each arm's shape and
out-of-fold QWK with its interval, and each tall arm's gain over the square, paired on the same images
with a 95 % interval that resamples patients.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np

from bench.cv import _paired_gain
from bench.data import REPO_CONFIGS, ensure_dataset
from bench.report import Report

RECIPE = "spine-cpu.yaml"
# The tall arms' pixels relative to the square's: the same, and about 2.5 times.
ARMS = {"square": ("fixed", 1.0), "aspect": ("data", 1.0), "aspect_2.5x": ("data", 2.5)}
# Which patients go to which fold: `spine-hf cv`'s default, so that runs it made can be measured again.
FOLD_SEED = 42


def bench_shapes(args, report: Report, work: Path, tree: Path) -> None:
    from spine_hf.config import parse_config
    from spine_hf.models.folder import ModelFolder
    from spine_hf.predict.out_of_fold import read_oof_file
    from spine_hf.training.cross_validation import CV_METRICS_FILE, cross_validate

    print("\n== shapes: a square against the films' aspect, out of fold, at one time budget ==", flush=True)
    # A converted dataset is used as it is (its patients' pseudonyms, hence the folds, stay those of earlier runs).
    dataset = tree if (tree / "dataset_dict.json").is_file() else ensure_dataset(tree, work)
    side = args.image_size if isinstance(args.image_size, int) else 128
    found = {}
    for name, (aspect, pixels) in ARMS.items():
        out = work / "shapes" / name
        size = round(side * math.sqrt(pixels))
        cfg = parse_config(["--config_path", str(REPO_CONFIGS / RECIPE), f"--data.dataset={dataset}",
                            f"--train.output_dir={out}", f"--train.time_budget_minutes={args.budget_minutes}",
                            f"--model.name={args.model}", f"--model.aspect={aspect}", f"--model.image_size={size}",
                            *(["--train.mixed_precision=no"] if args.precision == "fp32" else [])])  # fmt: skip
        if not (args.reuse_runs and (out / CV_METRICS_FILE).is_file()):
            start = time.perf_counter()
            cross_validate(cfg, folds=args.folds, seed=FOLD_SEED)
            report.say(f"{name}: {time.perf_counter() - start:.0f} s")
        metrics = json.loads((out / CV_METRICS_FILE).read_text())
        oof = read_oof_file(out)
        shape = list(ModelFolder.read(out / "fold_0" / "best").preprocessing.size)
        epochs = [json.loads((out / f"fold_{k}" / "results.json").read_text())["epochs"] for k in range(args.folds)]
        found[name] = {"shape": shape, "epochs": epochs, "qwk": metrics["metrics"]["qwk"], "oof": oof}
        report.number(f"shapes.{name}", {"shape": shape, "fold_epochs": epochs, "oof_qwk": metrics["metrics"]["qwk"]})
        report.say(f"{name}: {shape[0]} x {shape[1]} px, epochs {epochs}, out-of-fold QWK "
                   f"{_show(metrics['metrics']['qwk'])}")  # fmt: skip
    square = found["square"]["oof"]
    patients = _patients(dataset, square)
    for name in ("aspect", "aspect_2.5x"):
        oof = found[name]["oof"]
        if not np.array_equal(oof["grade"], square["grade"]) or oof["row"] != square["row"]:
            raise ValueError(f"{work / 'shapes' / name}: other images than the square arm's; run without --reuse-runs")
        gain = _paired_gain(oof["probabilities"], square["probabilities"], square["grade"], patients)
        report.number(f"shapes.{name}_minus_square_oof_qwk", gain)
        report.say(f"{name} - square: out-of-fold QWK {gain['value']:+.3f} "
                   f"[{gain['ci95'][0]:+.3f}, {gain['ci95'][1]:+.3f}] (paired, patients resampled)")  # fmt: skip


def _patients(dataset: Path, oof: dict) -> np.ndarray:
    from spine_hf.data.dataset_folder import load_grade_dataset

    data = load_grade_dataset(dataset)
    columns = {split: data[split]["patient"] for split in set(oof["split"])}
    rows = zip(oof["split"], oof["row"], strict=True)
    return np.array([columns[split][row] or f"{split}-{row}" for split, row in rows])


def _show(entry: dict) -> str:
    return f"{entry['value']:.3f} [{entry['ci95'][0]:.3f}, {entry['ci95'][1]:.3f}]"
