"""The model card (``README.md``) of a model folder: Hub front matter with a model-index, then the card.

It states the research-use disclaimer, intended and out-of-scope use, training data, results,
limitations and how to load the model; `hub.push` refuses a folder without it.
"""

from __future__ import annotations

from pathlib import Path

from spine_hf.config import Config
from spine_hf.grades import GRADE_NAMES

DISCLAIMER = "Research use only: this model is not a medical device"


def model_card(cfg: Config, record: dict | None, library: str) -> str:
    """README.md for a model folder of `library` ("timm" or "transformers") trained with `cfg`; `record` is the
    best epoch's metrics."""
    split = cfg.data.eval_split
    metrics = (record or {}).get(split, {})
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
`{cfg.data.dataset}` (split `{cfg.data.train_split}`), {cfg.model.image_size} px, backbone `{cfg.model.name}`
({"pretrained" if cfg.model.pretrained else "trained from scratch"}), loss `{cfg.optim.loss}`,
{cfg.train.epochs} epochs. The full resolved configuration is in `spine_hf_config.yaml`.

## Evaluation results
Split `{split}`{f", epoch {record.get('epoch')}" if record else ""}:

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
flagged, and their grade should not be used). `spine_hf.inference.Predictor`, `spine-hf predict` and
the spine-hf app use them; plain `pipeline()` returns the probabilities only.

## How to use
Decode radiographs with spine-hf (16-bit PNG and DICOM saturate in plain PIL loading):

```python
from spine_hf.imaging import decode_image
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
