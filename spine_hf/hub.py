"""Model folders that load everywhere: `pipeline()`, `AutoModelForImageClassification` and timm.

`save_for_hub` writes everything offline (weights as safetensors, config, preprocessing, the
resolved training config and metrics) into a folder that appears under its name only once it is
complete. Pushing it is a separate step.

For timm backbones the folder is timm's own Hub format with two fixes that make it load in
transformers 5 too: ``model_args`` never repeats ``num_classes`` (TimmWrapper passes it itself and
would fail on the duplicate), and the weights keep timm's key names (transformers adds its
``timm_model.`` prefix on load; a TimmWrapper's own ``save_pretrained`` would write prefixed keys
that timm cannot read).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from torch import nn

from spine_hf.config import Config, config_to_yaml
from spine_hf.grades import GRADE_NAMES
from spine_hf.model import HFClassifier, Preprocessing, resolve_library
from spine_hf.outputs import replace_folder

CONFIG_FILE = "spine_hf_config.yaml"
METRICS_FILE = "metrics.json"


def save_for_hub(
    model: nn.Module,
    cfg: Config,
    preprocessing: Preprocessing,
    out_dir: str | os.PathLike,
    metrics: dict | None = None,
    state_dict: dict | None = None,
) -> Path:
    """Write a Hub-ready model folder; replaces `out_dir` only once the new folder is complete.

    Args:
        state_dict: the weights to write (e.g. gathered from FSDP); default: the model's own.
    """
    out_dir = Path(out_dir)
    partial = out_dir.with_name(f".{out_dir.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        if state_dict is None:
            state_dict = model.state_dict()
        if isinstance(model, HFClassifier):
            prefix = "hf_model."
            state_dict = {k.removeprefix(prefix): v for k, v in state_dict.items()}
            _save_transformers(model, preprocessing, partial, state_dict)
        else:
            _save_timm(model, partial, state_dict)
        (partial / CONFIG_FILE).write_text(config_to_yaml(cfg), encoding="utf-8")
        (partial / "README.md").write_text(model_card(cfg, metrics), encoding="utf-8")
        if metrics is not None:
            (partial / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    except BaseException:
        # A full disk or a crash while writing leaves the previous folder exactly as it was.
        shutil.rmtree(partial, ignore_errors=True)
        raise
    replace_folder(partial, out_dir)
    return out_dir


def load_weights(model: nn.Module, folder: str | os.PathLike) -> None:
    """Load the weights of a folder written by `save_for_hub` into a model built from the same config."""
    if isinstance(model, HFClassifier):
        from transformers import AutoModelForImageClassification

        # transformers renames keys between its file format and its modules; let it do that.
        saved = AutoModelForImageClassification.from_pretrained(str(folder), trust_remote_code=False)
        model.hf_model.load_state_dict(saved.state_dict())
        return
    from safetensors.torch import load_file

    model.load_state_dict(load_file(str(Path(folder) / "model.safetensors")))


DISCLAIMER = "Research use only: this model is not a medical device"


def model_card(cfg: Config, record: dict | None) -> str:
    """README.md for a model folder: Hub front matter with a model-index, then the card."""
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
        "library_name": resolve_library(cfg.model),
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
`spine-hf calibrate` was run (see `calibration.json`).

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


def upload_plan(folder: str | os.PathLike) -> list[tuple[str, int]]:
    """(path in the repo, size in bytes) for every file `push` would upload."""
    folder = Path(folder)
    return sorted((p.relative_to(folder).as_posix(), p.stat().st_size) for p in folder.rglob("*")
                  if p.is_file() and not p.name.startswith("."))  # fmt: skip


def check_pushable(folder: str | os.PathLike) -> None:
    """Refuse a folder that does not load as a five-grade model or lacks a model card with the disclaimer."""
    from spine_hf.inference import Predictor

    folder = Path(folder)
    card = folder / "README.md"
    if not card.is_file() or "not a medical device" not in card.read_text(encoding="utf-8"):
        raise ValueError(f"{folder}: no model card (README.md) with the research-use disclaimer; save it with spine-hf")
    try:
        Predictor(folder)
    except Exception as err:  # any loading failure means the upload would be broken
        raise ValueError(f"{folder}: does not load as a spine-hf model ({err})") from err


def push(folder: str | os.PathLike, repo_id: str, *, private: bool = True, dry_run: bool = False,
         token: str | None = None) -> list[tuple[str, int]]:  # fmt: skip
    """Upload a checked model folder to the Hub; returns the files. The token comes from the argument,
    HF_TOKEN or `hf auth login`, and is only ever handed to huggingface_hub."""
    check_pushable(folder)
    plan = upload_plan(folder)
    if dry_run:
        return plan
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type="model",
                      commit_message="Upload spine-hf model")  # fmt: skip
    return plan


def _save_timm(model: nn.Module, out_dir: Path, state_dict: dict) -> None:
    from safetensors.torch import save_file
    from timm.models._hub import save_config_for_hf

    save_config_for_hf(model, str(out_dir / "config.json"), model_config={"label_names": list(GRADE_NAMES)})
    config_path = out_dir / "config.json"
    config = json.loads(config_path.read_text())
    model_args = {k: v for k, v in config.pop("model_args", {}).items() if k != "num_classes"}
    if model_args:
        config["model_args"] = model_args
    config_path.write_text(json.dumps(config, indent=2) + "\n")
    # channels_last weights are not contiguous; safetensors wants plain tensors.
    state = {key: tensor.detach().contiguous().cpu() for key, tensor in state_dict.items()}
    save_file(state, str(out_dir / "model.safetensors"), metadata={"format": "pt"})


def _save_transformers(model: HFClassifier, preprocessing: Preprocessing, out_dir: Path, state_dict: dict) -> None:
    from transformers import ViTImageProcessor

    state_dict = {key: tensor.detach().contiguous() for key, tensor in state_dict.items()}
    model.hf_model.save_pretrained(out_dir, state_dict=state_dict, safe_serialization=True)
    # A plain resize + normalise processor: the same squash-to-square the training used.
    processor = ViTImageProcessor(
        do_resize=True,
        size={"height": preprocessing.size, "width": preprocessing.size},
        resample=2,  # PIL bilinear
        image_mean=list(preprocessing.mean),
        image_std=list(preprocessing.std),
    )
    processor.save_pretrained(out_dir)
