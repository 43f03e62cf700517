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
from spine_hf.model import HFClassifier, Preprocessing

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
    if state_dict is None:
        state_dict = model.state_dict()
    if isinstance(model, HFClassifier):
        prefix = "hf_model."
        state_dict = {k.removeprefix(prefix): v for k, v in state_dict.items()}
        _save_transformers(model, preprocessing, partial, state_dict)
    else:
        _save_timm(model, partial, state_dict)
    (partial / CONFIG_FILE).write_text(config_to_yaml(cfg), encoding="utf-8")
    if metrics is not None:
        (partial / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    _replace_dir(partial, out_dir)
    return out_dir


def load_weights(model: nn.Module, folder: str | os.PathLike) -> None:
    """Load the weights of a folder written by `save_for_hub` into a model built from the same config."""
    if isinstance(model, HFClassifier):
        from transformers import AutoModelForImageClassification

        # transformers renames keys between its file format and its modules; let it do that.
        saved = AutoModelForImageClassification.from_pretrained(str(folder))
        model.hf_model.load_state_dict(saved.state_dict())
        return
    from safetensors.torch import load_file

    model.load_state_dict(load_file(str(Path(folder) / "model.safetensors")))


def push(folder: str | os.PathLike, repo_id: str, *, private: bool = True) -> str:
    """Upload a model folder to the Hub; the token comes from `hf auth login` or HF_TOKEN."""
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, private=private, exist_ok=True)
    info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message="Upload spine-hf model")
    return str(info)


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


def _replace_dir(new: Path, target: Path) -> None:
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    if target.exists():
        os.replace(target, old)
    os.replace(new, target)
    shutil.rmtree(old, ignore_errors=True)
