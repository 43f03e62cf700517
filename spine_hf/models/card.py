"""The model card (``README.md``) of a model folder: Hub front matter with a model-index, then the card.

It states the research-use disclaimer, intended and out-of-scope use, training data, results,
limitations and how to load the model; `hub.push` refuses a folder without it.
"""

from __future__ import annotations

from pathlib import Path

from spine_hf.config import Config
from spine_hf.grades import GRADE_NAMES
from spine_hf.models.preprocessing import as_shape

DISCLAIMER = "Research use only: this model is not a medical device"


def model_card(cfg: Config, record: dict | None, library: str, evaluated_on: str = "") -> str:
    """README.md for a model folder of `library` ("timm" or "transformers") trained with `cfg`; `record` is the
    best epoch's metrics (under the name of data.eval_split), measured on `evaluated_on` (default: that split)."""
    metrics = (record or {}).get(cfg.data.eval_split, {})
    split = evaluated_on or cfg.data.eval_split
    results = [
        {"type": key, "name": name, "value": round(float(metrics[key]), 4)}
        for key, name in (("qwk", "Quadratic weighted kappa"), ("accuracy", "Accuracy"),
                          ("balanced_accuracy", "Balanced accuracy"), ("macro_f1", "Macro F1"),
                          ("mae", "Mean absolute error (grades)"))
        if key in metrics
    ]  # fmt: skip
    base = cfg.model.name if cfg.model.pretrained else None
    front = {
        "library_name": library,
        "pipeline_tag": "image-classification",
        "license": "apache-2.0",
        "tags": ["medical-imaging", "radiography", "ordinal-classification", "spine-hf", "research-only"],
        "datasets": ["-".join(Path(cfg.data.dataset).parts[-2:])],
        "model-index": [{
            "name": Path(cfg.train.output_dir).name,
            "results": [{
                "task": {"type": "image-classification", "name": "Severity grading"},
                "dataset": {"type": "imagefolder", "name": "-".join(Path(cfg.data.dataset).parts[-2:]), "split": split},
                "metrics": results,
            }],
        }],
    }  # fmt: skip
    if base:
        front["base_model"] = base.removeprefix("hf-hub:")
    import yaml

    table = "\n".join(f"| {r['name']} | {r['value']:.4f} |" for r in results) or "| (not evaluated) | |"
    grades = ", ".join(f"{i} {name}" for i, name in enumerate(GRADE_NAMES))
    return f"""---
{yaml.safe_dump(front, sort_keys=False).strip()}
---

# Radiograph severity grading ({cfg.model.name})

> **{DISCLAIMER}.** It is research software. It is not cleared or validated for clinical use and
> must not guide the diagnosis or treatment of any patient.

Predicts one of five ordinal grades ({grades}) from a radiograph, as a probability per grade.
Trained with spine-hf from the dataset `{cfg.data.dataset}`.

## Intended use
Research on automated severity grading: benchmarking, method development, dataset auditing.

## Out-of-scope use
Clinical decisions of any kind; images of other body parts, views or modalities than the training
data; populations, scanners or grading conventions the training data did not cover.

## Training data
`{cfg.data.dataset}` (split `{cfg.data.train_split}`), {_size_text(cfg.model.image_size)}, backbone `{cfg.model.name}`
({"pretrained" if cfg.model.pretrained else "trained from scratch"}), loss `{cfg.optim.loss}`,
{cfg.train.epochs} epochs. The full resolved configuration is in `spine_hf_config.yaml`.

## Evaluation results
Split `{split}`{f", epoch {record['epoch']}" if record and "epoch" in record else ""}:

| metric | value |
| --- | --- |
{table}

Run `spine-hf evaluate` for confidence intervals, a confusion matrix and a reliability diagram.

## Limitations and biases
Grades between neighbours (especially "Doubtful") are ambiguous even for expert readers; the
model inherits the label noise, class imbalance and population of its training data and has not
been validated prospectively or externally. Probabilities are calibrated only if
`spine-hf calibrate` was run (see `calibration.json`). It also stores, where the validation split
was large enough, conformal grade ranges (`grade_ranges.json`: a range of grades that holds the
true grade for a stated share of images like the validation ones) and an out-of-distribution
referral (`referral.json`, `referral.safetensors`: images unlike the training radiographs are
flagged, and their grade should not be used). `spine_hf.Predictor`, `spine-hf predict` and the
spine-hf app use them; plain `pipeline()` returns the probabilities only.

## How to use
Decode radiographs with spine-hf (16-bit PNG and DICOM saturate in plain PIL loading):

```python
from spine_hf import decode_image
from transformers import pipeline

classifier = pipeline("image-classification", model="REPO_OR_FOLDER")
classifier(decode_image("radiograph.dcm"))
```

```python
from transformers import AutoModelForImageClassification
model = AutoModelForImageClassification.from_pretrained("REPO_OR_FOLDER")
```
{
        ""
        if front["library_name"] != "timm"
        else '''
```python
import timm
model = timm.create_model("hf-hub:REPO", pretrained=True)  # or "local-dir:FOLDER"
```
'''
    }"""


def ensemble_card(cfg: Config, cv_metrics: dict, library: str, single: str, chosen_by: str) -> str:
    """README.md for a fold ensemble (`spine-hf cv`): the card of its own network (`single`, chosen by
    `chosen_by`), with the out-of-fold results and what loads the ensemble and what loads only its own network."""
    folds = cv_metrics["folds"]
    rows = "\n".join(
        f"| {name} | {entry['value']:.4f} | [{entry['ci95'][0]:.4f}, {entry['ci95'][1]:.4f}] | "
        f"{spread['min']:.4f} to {spread['max']:.4f} |"
        for name, entry, spread in ((name, cv_metrics["metrics"][name], cv_metrics["fold_spread"][name])
                                    for name in cv_metrics["metrics"])
    )  # fmt: skip
    record = {cfg.data.eval_split: {name: entry["value"] for name, entry in cv_metrics["metrics"].items()}}
    card = model_card(cfg, record, library, f"out-of-fold ({cfg.data.train_split} + {cfg.data.eval_split})")
    section = f"""
## A fold ensemble of {folds} networks

This folder holds the {folds} best models of a {folds}-fold cross-validation (`spine-hf cv`) over the
`{cfg.data.train_split}` and `{cfg.data.eval_split}` splits, folds grouped by patient. `spine_hf.Predictor`,
`spine-hf predict`, `spine-hf evaluate`, the spine-hf app and `spine-hf export` use all of them and
average their probabilities (`ensemble.json` lists the members; the others are in `members/`).

**`pipeline()`, `AutoModelForImageClassification` and timm load single networks: they load only this
folder's own network, `{single}`** ({chosen_by}), not the ensemble. Grad-CAM in the app explains that
network too.

Out-of-fold results: every one of the {cv_metrics["count"]} images of {cv_metrics["patients"]} patients graded by
the member that did not see it (95 % intervals from resampling patients; the last column is the
range of the {folds} folds' own values):

| metric | out of fold | 95 % interval | folds |
| --- | --- | --- | --- |
{rows}
"""
    return card.rstrip("\n") + "\n" + section


def _size_text(image_size) -> str:
    """The input size in words: "224 px" for a square, "512 x 192 px (height x width)" for a tall one."""
    height, width = as_shape(image_size)
    return f"{height} px" if height == width else f"{height} x {width} px (height x width)"
