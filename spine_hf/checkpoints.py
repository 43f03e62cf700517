"""Resumable training checkpoints: accelerate's `save_state` plus a small JSON of where training was.

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
import shutil
from pathlib import Path

from accelerate import Accelerator
from safetensors.torch import load_file, save_file
from torch import nn

from spine_hf.config import ConfigError

STATE_FILE = "trainer_state.json"
EMA_FILE = "ema.safetensors"
logger = logging.getLogger(__name__)


def save_checkpoint(accelerator: Accelerator, out: Path, state: dict, keep: int, ema: nn.Module | None = None) -> Path:
    """Save a checkpoint named after the step (every process takes part) and keep the newest `keep`."""
    folder = out / "checkpoints" / f"step_{state['step']:08d}"
    accelerator.save_state(str(folder))
    if accelerator.is_main_process:
        if ema is not None:
            weights = {key: value.detach().cpu().contiguous() for key, value in ema.state_dict().items()}
            save_file(weights, str(folder / EMA_FILE))
        (folder / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")
        for old in _complete(out)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return folder


def resume_state(accelerator: Accelerator, resume: str, out: Path, ema: nn.Module | None = None) -> dict:
    """Restore everything from a checkpoint (`resume`: "true" for the latest, or a path); returns its state.

    With "true", a checkpoint that fails to load (a corrupt file) is skipped with a warning and the
    one before it is used.
    """
    if resume.lower() in ("true", "latest", "1", "yes"):
        candidates = list(reversed(_complete(out)))
        if not candidates:
            raise ConfigError(f"train.resume: no complete checkpoint in {out / 'checkpoints'}")
    else:
        candidates = [Path(resume)]
        if not (candidates[0] / STATE_FILE).is_file():
            raise ConfigError(f"train.resume: {candidates[0]} is not a complete checkpoint (no {STATE_FILE})")
    for index, folder in enumerate(candidates):
        try:
            state = json.loads((folder / STATE_FILE).read_text())
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
        accelerator.print(f"resumed from {folder} (epoch {state['epoch']}, step {state['step']})")
        return state
    raise AssertionError("unreachable")


def _complete(out: Path) -> list[Path]:
    return sorted(p for p in (out / "checkpoints").glob("step_*") if (p / STATE_FILE).is_file())
