"""The run folder: the names of its files, the training state, and resumable checkpoints.

A run folder (``train.output_dir``) holds `CONFIG_FILE`, `BEST_DIR` (the best model, Hub-ready),
`METRICS_FILE` (one record per epoch), `RESULTS_FILE`, `PREDICTIONS_FILE`, `LOGS_DIR` and
`CHECKPOINTS_DIR`. Where training stands is a `TrainState`, saved with every checkpoint.

``output_dir/checkpoints/step_N/`` holds the model, optimizer, scheduler, RNG and sampler states
(accelerate), the EMA weights (``ema.safetensors``) and ``trainer_state.json`` (epoch, step, best
score, per-epoch history). That JSON is written last, so a checkpoint interrupted while saving is
never resumed from.

Loading never unpickles arbitrary objects: the model and EMA are safetensors, and accelerate reads
its optimizer, scheduler and RNG files with ``torch.load(weights_only=True)``. (The EMA is not
registered with accelerate because accelerate loads registered objects with ``weights_only=False``.)
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from accelerate import Accelerator
from safetensors.torch import load_file, save_file
from torch import nn

from spine_hf.config import ConfigError

# The files of a run folder.
CONFIG_FILE = "config.yaml"
BEST_DIR = "best"
METRICS_FILE = "metrics.json"
RESULTS_FILE = "results.json"
PREDICTIONS_FILE = "best_predictions.json"
LOGS_DIR = "logs"
CHECKPOINTS_DIR = "checkpoints"
# Inside a checkpoint, beside accelerate's own files.
STATE_FILE = "trainer_state.json"
EMA_FILE = "ema.safetensors"
logger = logging.getLogger(__name__)


@dataclass
class TrainState:
    """Where training stands; everything a resumed run needs beyond accelerate's own state."""

    # Epochs completed, and optimizer steps taken.
    epoch: int = 0
    step: int = 0
    # Batches of the current epoch already trained on (a mid-epoch checkpoint resumes after them).
    batches_in_epoch: int = 0
    best_qwk: float = -math.inf
    best_epoch: int = -1
    # Epochs since the best one, for train.patience.
    bad_epochs: int = 0
    # One record per completed epoch (what metrics.json holds).
    history: list[dict] = field(default_factory=list)
    # The epochs the schedule was laid over when train.time_budget_minutes chose them (None: train.epochs).
    epochs: int | None = None

    def end_epoch(self, record: dict, qwk: float) -> bool:
        """Record a finished epoch; returns whether its validation QWK is the best so far."""
        self.history.append(record)
        self.epoch, self.batches_in_epoch = record["epoch"], 0
        if qwk > self.best_qwk:
            self.best_qwk, self.best_epoch, self.bad_epochs = qwk, record["epoch"], 0
            return True
        self.bad_epochs += 1
        return False

    def best_record(self) -> dict:
        return next((record for record in self.history if record["epoch"] == self.best_epoch), {})


def save_checkpoint(
    accelerator: Accelerator, out: Path, state: TrainState, keep: int, ema: nn.Module | None = None
) -> Path:
    """Save a checkpoint named after the step (every process takes part) and keep the newest `keep`."""
    folder = out / CHECKPOINTS_DIR / f"step_{state.step:08d}"
    accelerator.save_state(str(folder))
    if accelerator.is_main_process:
        if ema is not None:
            weights = {key: value.detach().cpu().contiguous() for key, value in ema.state_dict().items()}
            save_file(weights, str(folder / EMA_FILE))
        (folder / STATE_FILE).write_text(json.dumps(asdict(state), indent=2) + "\n")
        for old in _complete(out)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return folder


def resume_state(accelerator: Accelerator, resume: str, out: Path, ema: nn.Module | None = None) -> TrainState:
    """Restore everything from a checkpoint (`resume`: "true" for the latest, or a path); returns its state.

    With "true", a checkpoint that fails to load (a corrupt file) is skipped with a warning and the
    one before it is used.
    """
    if resume.lower() in ("true", "latest", "1", "yes"):
        candidates = list(reversed(_complete(out)))
        if not candidates:
            raise ConfigError(f"train.resume: no complete checkpoint in {out / CHECKPOINTS_DIR}")
    else:
        candidates = [Path(resume)]
        if not (candidates[0] / STATE_FILE).is_file():
            raise ConfigError(f"train.resume: {candidates[0]} is not a complete checkpoint (no {STATE_FILE})")
    for index, folder in enumerate(candidates):
        try:
            state = TrainState(**json.loads((folder / STATE_FILE).read_text()))
            accelerator.load_state(str(folder))
            if ema is not None:
                ema.load_state_dict(load_file(str(folder / EMA_FILE)))
        except Exception as err:  # safetensors, torch and json raise different types for damaged files
            if index + 1 == len(candidates):
                raise RuntimeError(
                    f"train.resume: {folder} cannot be loaded ({err}) and there is no older one"
                ) from err
            logger.warning(
                "checkpoint %s cannot be loaded (%s); falling back to %s", folder, err, candidates[index + 1]
            )
            continue
        accelerator.print(f"resumed from {folder} (epoch {state.epoch}, step {state.step})")
        return state
    raise AssertionError("unreachable")


def _complete(out: Path) -> list[Path]:
    return sorted(p for p in (out / CHECKPOINTS_DIR).glob("step_*") if (p / STATE_FILE).is_file())
