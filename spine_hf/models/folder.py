"""The saved model folder, and the one place that tells timm and transformers apart.

A model folder loads with `pipeline("image-classification")`, `AutoModelForImageClassification` and,
for timm backbones, `timm.create_model("local-dir:...")`. Everything else in spine-hf asks this
module instead of looking inside the folder itself: what a saved folder holds (`ModelFolder`,
`open_model_folder`: its library, its preprocessing, its labels, the name of its classifier's
weights), writing one (`save_for_hub`), loading it (`load_model`), reading its weights back into a
built model (`load_weights`), folding a temperature into its classifier (`scale_classifier`), finding
that classifier in a loaded model (`classifier_module`) and the conformal grade ranges and referral
description `spine-hf calibrate` stores beside the weights (`grade_ranges`, `referral`). A folder
written by `spine-hf export` holds ``model.onnx`` instead of the PyTorch weights (`has_onnx`,
`onnx_session`).

A fold ensemble (`spine-hf cv`) is a model folder too: its own network (the one `pipeline()` and timm
load, as they load single networks) is one of the members or a network distilled from them, and
``ensemble.json`` lists the member folders whose probabilities `Predictor` averages (`members`,
`member_folders`, `save_ensemble`).

Loading is as light as the folder allows: a timm folder loads through timm alone (its ``local-dir:``
loader; transformers is not even imported), a transformers folder through
`AutoModelForImageClassification`, and reading a folder imports neither torch nor onnxruntime.

For timm backbones the folder is timm's own Hub format with two fixes that make it load in
transformers 5 too: ``model_args`` never repeats ``num_classes`` (TimmWrapper passes it itself and
would fail on the duplicate), and the weights keep timm's key names (transformers adds its
``timm_model.`` prefix on load; a TimmWrapper's own ``save_pretrained`` would write prefixed keys
that timm cannot read). Every file is safetensors or plain text: nothing in a folder is unpickled.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from spine_hf.config import Config, config_to_yaml
from spine_hf.grades import GRADE_NAMES
from spine_hf.models.conformal import GradeRanges
from spine_hf.models.preprocessing import Preprocessing
from spine_hf.models.referral import Referral
from spine_hf.outputs import staged_folder

if TYPE_CHECKING:
    from torch import nn

CONFIG_FILE = "spine_hf_config.yaml"
METRICS_FILE = "metrics.json"
WEIGHTS_FILE = "model.safetensors"
ONNX_FILE = "model.onnx"
# In a fold ensemble: the member folders (relative paths, "." for the folder's own network) and how they combine.
ENSEMBLE_FILE = "ensemble.json"
MEMBERS_DIR = "members"
# transformers backbones are wrapped in `model.HFClassifier`, whose state dict adds this prefix.
HF_PREFIX = "hf_model."


@dataclass(frozen=True)
class ModelFolder:
    """What a saved model folder holds, read from its ``config.json`` (and preprocessor config)."""

    path: Path
    # "timm" (timm's Hub format: config.json has a pretrained_cfg) or "transformers".
    library: str
    preprocessing: Preprocessing
    # The classifier's weights are `{classifier}.weight` and `{classifier}.bias` in model.safetensors.
    classifier: str
    # The name of each output, index = grade (empty where config.json names none).
    labels: tuple[str, ...] = ()
    # Conformal grade ranges and the out-of-distribution referral, where `spine-hf calibrate` fitted them.
    grade_ranges: GradeRanges | None = None
    referral: Referral | None = None
    # A fold ensemble's member folders, relative to `path` ("." is this folder's own network, when it is one of
    # them); () for one network.
    members: tuple[str, ...] = ()

    @classmethod
    def read(cls, path: str | os.PathLike) -> ModelFolder:
        path = Path(path)
        config_file = path / "config.json"
        if not config_file.is_file():
            raise FileNotFoundError(f"{path}: no config.json; not a model folder saved by spine-hf or transformers")
        config = json.loads(config_file.read_text())
        trust = {"grade_ranges": GradeRanges.load(path), "referral": Referral.load(path), "members": _members(path)}
        if "pretrained_cfg" in config:
            cfg = config["pretrained_cfg"]
            size = (int(cfg["input_size"][-2]), int(cfg["input_size"][-1]))
            preprocessing = Preprocessing(size, tuple(cfg["mean"]), tuple(cfg["std"]))
            labels = tuple(config.get("label_names", ()))
            return cls(path, "timm", preprocessing, cfg.get("classifier", "classifier"), labels, **trust)
        id2label = config.get("id2label", {})
        labels = tuple(id2label[str(i)] for i in range(len(id2label)) if str(i) in id2label)
        processor = json.loads((path / "preprocessor_config.json").read_text())
        size = processor["size"]
        if isinstance(size, dict) and "height" in size:
            size = (int(size["height"]), int(size.get("width", size["height"])))
        else:
            size = int(size.get("shortest_edge") if isinstance(size, dict) else size)
        preprocessing = Preprocessing(size, tuple(processor["image_mean"]), tuple(processor["image_std"]))
        return cls(path, "transformers", preprocessing, "classifier", labels, **trust)

    def member_folders(self) -> list[ModelFolder]:
        """The `ModelFolder` of each member of a fold ensemble (`self` for "."), checked to see the same pixels
        and predict the same grades; [] for a single network."""
        found = []
        for member in self.members:
            folder = self if member == "." else ModelFolder.read(self.path / member)
            if folder.preprocessing != self.preprocessing or folder.labels != self.labels:
                raise ValueError(f"{self.path / member}: its preprocessing or grade names differ from {self.path}'s; "
                                 f"an ensemble's members must see and predict the same")  # fmt: skip
            found.append(folder)
        return found

    @property
    def has_weights(self) -> bool:
        """Whether the folder holds PyTorch weights (an exported folder holds only `model.onnx`)."""
        return (self.path / WEIGHTS_FILE).is_file()

    @property
    def has_onnx(self) -> bool:
        return (self.path / ONNX_FILE).is_file()

    def load_model(self) -> nn.Module:
        """The folder as a torch module from pixels (N x 3 x H x W) to logits (N x 5), as `build_model`
        builds it: the timm model itself (loaded by timm), or a transformers model in `HFClassifier`."""
        if not self.has_weights:
            hint = "; it is an ONNX export: use the onnx backend" if self.has_onnx else ""
            raise FileNotFoundError(f"{self.path}: no PyTorch weights ({WEIGHTS_FILE}){hint}")
        if self.library == "timm":
            import timm

            return timm.create_model(f"local-dir:{self.path}", pretrained=True)
        from transformers import AutoModelForImageClassification

        from spine_hf.models.build import HFClassifier

        return HFClassifier(AutoModelForImageClassification.from_pretrained(str(self.path), trust_remote_code=False))

    def onnx_session(self):
        """An ONNX Runtime session on the CPU for the folder's `model.onnx`."""
        if not self.has_onnx:
            raise FileNotFoundError(f"{self.path}: no {ONNX_FILE}; make one with `spine-hf export --model "
                                    f"{self.path} --onnx OUT` and use OUT")  # fmt: skip
        try:
            import onnxruntime
        except ImportError as err:
            raise RuntimeError("the onnx backend needs ONNX Runtime: pip install 'spine-hf[onnx]'") from err
        options = onnxruntime.SessionOptions()
        # Its threads must not spin-wait after a call: they would hold the cores the rest of the process needs
        # (a PyTorch model in the same process ran a one-image call 2.5x slower beside a spinning session).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        return onnxruntime.InferenceSession(str(self.path / ONNX_FILE), options, providers=["CPUExecutionProvider"])

    def classifier_module(self, model: nn.Module) -> nn.Module:
        """The classifier layer of what `load_model` returned: its input is the penultimate feature vector."""
        return self._classifier_owner(model).get_submodule(self.classifier)

    def replace_classifier(self, model: nn.Module, module: nn.Module) -> nn.Module:
        """Put `module` where the classifier layer of a loaded model is; returns the layer it replaced."""
        layer = self.classifier_module(model)
        self._classifier_owner(model).set_submodule(self.classifier, module)
        return layer

    def _classifier_owner(self, model: nn.Module) -> nn.Module:
        return model if self.library == "timm" else model.hf_model  # HFClassifier holds the transformers model

    def scale_classifier(self, temperature: float) -> None:
        """Divide the classifier's weight and bias by `temperature`, in place: logits / T, nothing else."""
        from safetensors.torch import load_file, save_file

        weights = load_file(str(self.path / WEIGHTS_FILE))
        keys = [f"{self.classifier}.weight", f"{self.classifier}.bias"]
        if keys[0] not in weights:
            raise ValueError(f"{self.path}: no classifier weights named {keys[0]}; cannot fold a temperature in")
        for key in keys:
            if key in weights:
                weights[key] = (weights[key].float() / temperature).to(weights[key].dtype).contiguous()
        save_file(weights, str(self.path / WEIGHTS_FILE), metadata={"format": "pt"})


def _members(path: Path) -> tuple[str, ...]:
    """The member folders listed in `path`'s ENSEMBLE_FILE, or () when it has none."""
    file = path / ENSEMBLE_FILE
    if not file.is_file():
        return ()
    try:
        members = tuple(str(member) for member in json.loads(file.read_text(encoding="utf-8"))["members"])
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{file} is not an ensemble file written by `spine-hf cv`: {err}") from err
    outside = [m for m in members if m != "." and (Path(m).is_absolute() or ".." in Path(m).parts)]
    if not members or outside or len(set(members)) != len(members):
        raise ValueError(f"{file}: members must be distinct folders inside {path} (\".\" for its own network) "
                         f"(found {list(members)})")  # fmt: skip
    return members


def save_ensemble(members: dict[str, Path], single: str, out: str | os.PathLike, card: str, info: dict,
                  own: Path | None = None) -> Path:  # fmt: skip
    """Write a fold ensemble of `members` (name -> model folder): member `single` is the folder's own network
    (what `pipeline()` and timm load), the others go to ``members/<name>``; with `own` (a model folder that
    is not a member, e.g. distilled from them), that is the own network and every member goes to
    ``members/<name>``. `card` replaces the model card, `info` goes into ENSEMBLE_FILE. Replaces `out` only
    once the new folder is complete."""
    import shutil

    listed = []
    with staged_folder(out, overwrite=True) as staging:
        if own is not None:
            shutil.copytree(own, staging, dirs_exist_ok=True)
        for name, member in members.items():
            if name == single and own is None:
                shutil.copytree(member, staging, dirs_exist_ok=True)
                listed.append(".")
            else:
                shutil.copytree(member, staging / MEMBERS_DIR / name)
                listed.append(f"{MEMBERS_DIR}/{name}")
        (staging / "README.md").write_text(card, encoding="utf-8")
        (staging / ENSEMBLE_FILE).write_text(json.dumps({"members": listed, **info}, indent=2) + "\n", encoding="utf-8")
    return Path(out)


def open_model_folder(model: str | os.PathLike) -> ModelFolder:
    """The `ModelFolder` of a local folder, or of a Hub repo id (fetched, or from the cache with HF_HUB_OFFLINE=1)."""
    path = Path(model)
    if not path.is_dir():
        if path.exists() or str(model).count("/") != 1:
            raise FileNotFoundError(f"{model}: not a model folder and not a Hub repo id (org/name)")
        from huggingface_hub import snapshot_download

        path = Path(snapshot_download(repo_id=str(model)))
    return ModelFolder.read(path)


def save_for_hub(
    model: nn.Module,
    cfg: Config,
    preprocessing: Preprocessing,
    out_dir: str | os.PathLike,
    metrics: dict | None = None,
    state_dict: dict | None = None,
) -> Path:
    """Write a Hub-ready model folder (weights, config, preprocessing, model card, the resolved training
    config, metrics); replaces `out_dir` only once the new folder is complete.

    Args:
        model: what `build.build_model(cfg.model)` built (and training changed).
        state_dict: the weights to write (e.g. gathered from FSDP); default: the model's own.
    """
    from spine_hf.models.build import resolve_library
    from spine_hf.models.card import model_card

    library = resolve_library(cfg.model)
    with staged_folder(out_dir, overwrite=True) as staging:
        if state_dict is None:
            state_dict = model.state_dict()
        if library == "transformers":
            state_dict = {key.removeprefix(HF_PREFIX): value for key, value in state_dict.items()}
            _save_transformers(model.hf_model, preprocessing, staging, state_dict)
        else:
            _save_timm(model, staging, state_dict)
        (staging / CONFIG_FILE).write_text(config_to_yaml(cfg), encoding="utf-8")
        (staging / "README.md").write_text(model_card(cfg, metrics, library), encoding="utf-8")
        if metrics is not None:
            (staging / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    return Path(out_dir)


def load_weights(model: nn.Module, folder: str | os.PathLike) -> None:
    """Load the weights of a folder written by `save_for_hub` into a model built from the same config."""
    saved = ModelFolder.read(folder)
    if saved.library == "transformers":
        # transformers renames keys between its file format and its modules; let it do that.
        model.hf_model.load_state_dict(saved.load_model().hf_model.state_dict())
        return
    from safetensors.torch import load_file

    model.load_state_dict(load_file(str(saved.path / WEIGHTS_FILE)))


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
    save_file(state, str(out_dir / WEIGHTS_FILE), metadata={"format": "pt"})


def _save_transformers(hf_model: nn.Module, preprocessing: Preprocessing, out_dir: Path, state_dict: dict) -> None:
    from transformers import ViTImageProcessor

    state_dict = {key: tensor.detach().contiguous() for key, tensor in state_dict.items()}
    hf_model.save_pretrained(out_dir, state_dict=state_dict, safe_serialization=True)
    # A plain resize + normalise processor: the same resize to (height, width), no crop, that training used.
    processor = ViTImageProcessor(
        do_resize=True,
        size={"height": preprocessing.height, "width": preprocessing.width},
        resample=2,  # PIL bilinear
        image_mean=list(preprocessing.mean),
        image_std=list(preprocessing.std),
    )
    processor.save_pretrained(out_dir)
