"""The one configuration tree for training: defaults in code, overrides from YAML and the command line.

    accelerate launch -m spine_hf.train --config_path configs/quickstart.yaml --optim.lr=3e-4

Unknown keys are errors (a typo must not silently train the wrong model); every value is checked in
`__post_init__` with a message that says what to change. The comment above each field is its
``--help`` text.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LIBRARIES = ("auto", "timm", "transformers")
# model.aspect: the input shape as model.image_size says, or the data's median aspect at that pixel count.
ASPECTS = ("fixed", "data")
LOSSES = ("ce", "ordinal")
SAMPLERS = ("none", "balanced")
# train.mixed_precision: accelerate's names ("" = whatever `accelerate launch --mixed_precision` says).
MIXED_PRECISIONS = ("", "no", "fp16", "bf16", "auto")
# What the Predictor computes in (`spine-hf predict --precision`): a dtype, not a mixed-precision mode.
PREDICT_PRECISIONS = ("fp32", "bf16", "auto")
# What runs a model folder (`Predictor(backend=...)`, `spine-hf predict --backend`, a Space's runtime).
BACKENDS = ("torch", "onnx")


@dataclass
class DataConfig:
    # Folder written by `spine-hf data convert` (read with datasets.load_from_disk).
    dataset: str = "outputs/quickstart/dataset"
    # Split the model learns from.
    train_split: str = "train"
    # Split that picks the best epoch (validation QWK) and drives early stopping.
    eval_split: str = "validation"
    # Split scored once with the best model at the end; "" to skip (e.g. when it is held out).
    test_split: str = "test"
    # Random horizontal flips; turn off when left/right carries meaning for your images.
    hflip: bool = True
    # Largest random rotation, in degrees.
    rotate: float = 10.0
    # RandomResizedCrop keeps between this fraction and all of the image area.
    min_scale: float = 0.6
    # Random brightness and contrast change (+-fraction); intensity only, never colour.
    intensity: float = 0.2
    # Progressive resizing: the first epoch trains at this fraction of model.image_size (e.g. 0.75: 96 of
    # 128 px), which rises in steps of 16 px to model.image_size by data.progressive_until of the epochs
    # (low resolution early is cheap); evaluation and the saved model always use model.image_size. 0 = off.
    progressive_scale: float = 0.0
    # The part of the epochs by which progressive resizing reaches model.image_size (FFCV ramps late, e.g.
    # 0.75; an earlier end trains longer at the size the model is evaluated and published at).
    progressive_until: float = 0.75
    # With progressive resizing, at most this many epochs below model.image_size (0 = no limit): where many
    # epochs fit, a ramp of a fixed part of the run keeps the model small for longer than it gains from.
    progressive_max_epochs: int = 0
    # With progressive resizing, data.min_scale for the epochs at model.image_size (0 = data.min_scale
    # throughout). A strong crop's zoom lets the small early sides transfer to evaluation at full size; a
    # lighter one at full size trains at the scale the model is evaluated at (FixRes: Touvron et al. 2019).
    full_side_min_scale: float = 0.0
    # With progressive resizing, data.rotate for the epochs at model.image_size (-1 = data.rotate throughout):
    # strong augmentation helps the small early sides most; at full size a lighter one trains nearer the
    # images the model is evaluated on.
    full_side_rotate: float = -1.0
    # "none", or "balanced" to draw every grade equally often.
    sampler: str = "none"
    # Folder for the decoded cache (each split's images decoded once, as squares every process maps);
    # "" = squares/ inside data.dataset. Set it when the dataset folder is read-only.
    cache_dir: str = ""
    # DataLoader worker processes per training process (0 = load in the training process).
    num_workers: int = 0
    # Use only the first N images of each split (0 = all); for smoke tests.
    max_samples: int = 0

    def __post_init__(self):
        _check(self.sampler in SAMPLERS, f"data.sampler must be one of {SAMPLERS}, not {self.sampler!r}")
        _check(0 < self.min_scale <= 1, "data.min_scale must be in (0, 1]")
        _check(0 <= self.intensity < 1, "data.intensity must be in [0, 1)")
        _check(self.num_workers >= 0 and self.max_samples >= 0, "data.num_workers/max_samples must be >= 0")
        _check(0 <= self.progressive_scale < 1, "data.progressive_scale must be in [0, 1) (0 = off)")
        _check(0 < self.progressive_until <= 1, "data.progressive_until must be in (0, 1]")
        _check(self.progressive_max_epochs >= 0, "data.progressive_max_epochs must be >= 0 (0 = no limit)")
        _check(0 <= self.full_side_min_scale <= 1, "data.full_side_min_scale must be in [0, 1] (0 = data.min_scale)")
        _check(
            self.full_side_rotate == -1 or self.full_side_rotate >= 0,
            "data.full_side_rotate must be >= 0 (-1 = data.rotate)",
        )
        # Each full-side setting (data.full_side_<key>, for data.<key>) and its value when unset.
        for key, unset in (("min_scale", 0), ("rotate", -1)):
            _check(
                getattr(self, f"full_side_{key}") == unset or self.progressive_scale,
                f"data.full_side_{key} acts only with progressive resizing (data.progressive_scale > 0); "
                f"without it every epoch is at full side: set data.{key} instead",
            )


@dataclass
class ModelConfig:
    # A timm model name ("resnet18", "timm/convnext_small.fb_in22k"), a transformers checkpoint
    # ("google/vit-base-patch16-224") or, with pretrained=false, a transformers model type ("vit").
    name: str = "resnet18"
    # "timm", "transformers", or "auto" (timm when timm knows the name).
    library: str = "auto"
    # Start from pretrained weights (needs the Hub or a populated cache).
    pretrained: bool = False
    # What the model sees, in pixels: one side for a square (knee crops), or [height, width] for tall films
    # (e.g. [512, 192] for full-spine AP films, about 2.6:1). With model.aspect=data, one side whose square's
    # pixel count the data's shape keeps.
    image_size: int | list[int] = 224
    # "fixed": model.image_size as given; "data": the training split's median height:width (recorded by
    # `spine-hf data convert`) at about model.image_size^2 pixels, each side a multiple of the backbone's
    # stride or patch size. The chosen shape is printed and saved in the resolved config.
    aspect: str = "fixed"
    # Dropout before the classifier.
    drop_rate: float = 0.0
    # Stochastic depth, for models that support it.
    drop_path_rate: float = 0.0
    # Extra arguments: timm.create_model keywords, or transformers config fields (e.g. a tiny ViT).
    overrides: dict[str, Any] = field(default_factory=dict)
    # channels_last memory layout (faster convolutions on CPU and GPU).
    channels_last: bool = True

    def __post_init__(self):
        _check(self.library in LIBRARIES, f"model.library must be one of {LIBRARIES}, not {self.library!r}")
        size = self.image_size
        if isinstance(size, list) and len(size) == 1:
            size = self.image_size = size[0]
        sides = [size] if isinstance(size, int) else size
        _check(
            len(sides) == 2 or isinstance(size, int),
            f"model.image_size must be one side or [height, width], not {size!r}",
        )
        _check(all(isinstance(s, int) and s >= 16 for s in sides), "model.image_size: every side must be at least 16")
        _check(self.aspect in ASPECTS, f"model.aspect must be one of {ASPECTS}, not {self.aspect!r}")
        _check(
            self.aspect == "fixed" or isinstance(size, int),
            "model.aspect=data takes one side in model.image_size (the pixel count of its square), not [height, width]",
        )
        _check(0 <= self.drop_rate < 1 and 0 <= self.drop_path_rate < 1, "model drop rates must be in [0, 1)")


@dataclass
class OptimConfig:
    # Peak learning rate (AdamW), reached after the warmup.
    lr: float = 1e-3
    # AdamW weight decay.
    weight_decay: float = 0.05
    # Linear warmup length, in epochs (fractions allowed).
    warmup_epochs: float = 1.0
    # Cosine decay ends at lr * min_lr_ratio.
    min_lr_ratio: float = 0.01
    # Clip the gradient norm to this value (0 = no clipping).
    grad_clip: float = 1.0
    # "ce" (cross-entropy) or "ordinal" (soft ordinal labels: neighbouring grades share credit).
    loss: str = "ce"
    # Sharpness of the soft ordinal labels: target ~ exp(-ordinal_scale * (k - grade)^2).
    ordinal_scale: float = 2.0
    # Label smoothing for "ce".
    label_smoothing: float = 0.0
    # Weight each grade by inverse frequency in the loss.
    class_weights: bool = False

    def __post_init__(self):
        _check(self.loss in LOSSES, f"optim.loss must be one of {LOSSES}, not {self.loss!r}")
        _check(self.lr > 0, "optim.lr must be positive")
        _check(0 <= self.min_lr_ratio <= 1, "optim.min_lr_ratio must be in [0, 1]")
        _check(self.ordinal_scale > 0, "optim.ordinal_scale must be positive")
        _check(self.warmup_epochs >= 0 and self.grad_clip >= 0, "optim.warmup_epochs/grad_clip must be >= 0")


@dataclass
class TrainConfig:
    # Where checkpoints, best/, metrics.json and logs go.
    output_dir: str = "outputs/run"
    # Passes over the training split.
    epochs: int = 10
    # Images per step and process.
    batch_size: int = 32
    # Images per evaluation step and process.
    eval_batch_size: int = 64
    # Steps whose gradients are summed before an optimizer step.
    grad_accum: int = 1
    # "no", "fp16" or "bf16"; "auto": bf16 where the device computes it natively (a bf16 GPU, or a CPU
    # with AVX512-BF16/AMX), else "no"; "" leaves it to `accelerate launch --mixed_precision`.
    mixed_precision: str = ""
    # Seeds Python, numpy, torch and the data order.
    seed: int = 42
    # Stop after this many epochs without a better validation QWK (0 = never).
    patience: int = 0
    # Average the weights over steps with this decay (0 = off); the average is what is evaluated and saved.
    ema_decay: float = 0.0
    # Save a resumable checkpoint every N epochs (0 = only at the end).
    checkpoint_epochs: int = 1
    # Also save one every N optimizer steps (0 = off).
    checkpoint_steps: int = 0
    # How many resumable checkpoints to keep.
    keep_checkpoints: int = 2
    # "" to start fresh, "true" to continue from the latest checkpoint in output_dir, or a checkpoint path.
    resume: str = ""
    # Start afresh in an output_dir that holds an earlier run (its checkpoints are deleted first;
    # best/ is replaced when the new run saves its first best model). Without it such a dir is refused.
    overwrite: bool = False
    # Write a tensorboard log under output_dir/logs.
    tensorboard: bool = False
    # Fit the whole run into this many minutes (0 = off): after every epoch the schedule's length is set
    # again to the epochs that fit at the pace measured so far (setup and the test split included), between
    # train.min_epochs and train.epochs (then an upper bound, not a target), and the warmup + cosine schedule
    # is laid over them, so the run ends near its budget with the learning rate at its floor on any machine.
    time_budget_minutes: float = 0.0
    # With a time budget: train at least this many epochs, even where they take longer than the budget.
    min_epochs: int = 1
    # Stop gracefully after this many minutes of training (0 = no limit), wherever the schedule is; the
    # best model is kept. A hard stop: prefer time_budget_minutes.
    time_limit_minutes: float = 0.0
    # CPU threads per process for torch (0 = on a CPU, the cores shared among this machine's processes).
    threads: int = 0

    def __post_init__(self):
        _check(self.epochs >= 1 and self.batch_size >= 1 and self.eval_batch_size >= 1, "epochs/batch sizes >= 1")
        _check(self.grad_accum >= 1, "train.grad_accum must be >= 1")
        _check(1 <= self.min_epochs <= self.epochs, "train.min_epochs must be in [1, train.epochs]")
        if self.mixed_precision == "False":  # YAML, so also `--train.mixed_precision=no`, reads a bare no as false
            self.mixed_precision = "no"
        _check(self.mixed_precision in MIXED_PRECISIONS, f"train.mixed_precision must be one of {MIXED_PRECISIONS}")
        _check(0 <= self.ema_decay < 1, "train.ema_decay must be in [0, 1)")
        _check(self.keep_checkpoints >= 1, "train.keep_checkpoints must be >= 1")
        _check(self.time_budget_minutes >= 0 and self.time_limit_minutes >= 0, "train time limits must be >= 0")
        _check(self.patience >= 0 and self.checkpoint_epochs >= 0 and self.checkpoint_steps >= 0, "counts >= 0")


@dataclass
class HubConfig:
    # Push best/ to this Hub repo at the end ("" = do not push). Token: `hf auth login` or HF_TOKEN.
    repo_id: str = ""
    # Create the repo as private.
    private: bool = True


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    hub: HubConfig = field(default_factory=HubConfig)


class ConfigError(ValueError):
    """A configuration that cannot be used; the message says what to change."""


def report_error(err: ValueError | OSError) -> int:
    """Print a run's error without a traceback (the message names the setting or file and the fix) and
    return the exit status: 2 for a configuration that cannot be used, 1 for bad data or folders."""
    print(f"error: {err}", file=sys.stderr)
    return 2 if isinstance(err, ConfigError) else 1


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def parse_config(args: list[str] | None = None) -> Config:
    """Parse ``--config_path FILE`` and ``--section.key=value`` overrides into a `Config`.

    Raises:
        ConfigError: unknown keys, wrong types or invalid values.
    """
    import draccus
    from draccus.utils import ParsingError

    try:
        return draccus.parse(config_class=Config, args=args)
    except ParsingError as err:
        cause: BaseException | None = err
        while cause is not None:  # draccus wraps our own __post_init__ message; show that one
            if isinstance(cause, ConfigError):
                raise ConfigError(str(cause)) from err
            cause = cause.__cause__ or cause.__context__
        raise ConfigError(f"invalid configuration: {err}") from err


def config_to_yaml(cfg: Config) -> str:
    """The resolved configuration as YAML (saved beside every checkpoint and model)."""
    import draccus

    return draccus.dump(cfg)


def save_config(cfg: Config, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.write_text(config_to_yaml(cfg), encoding="utf-8")
    return path
