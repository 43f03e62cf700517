"""`TrainState`: the best epoch, patience and the history, and its round trip through a checkpoint's JSON.

Saving and resuming real checkpoints (interrupted runs, corrupt and malicious files) is tested in
test_train.py, where there is a run to checkpoint.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict

from spine_hf.training.checkpoints import TrainState


def test_end_epoch_tracks_the_best_epoch_and_the_epochs_since():
    state = TrainState(batches_in_epoch=7)
    assert state.best_qwk == -math.inf and state.best_record() == {}
    assert state.end_epoch({"epoch": 1, "validation": {"qwk": 0.3}}, 0.3) is True
    assert state.end_epoch({"epoch": 2, "validation": {"qwk": 0.2}}, 0.2) is False
    assert state.end_epoch({"epoch": 3, "validation": {"qwk": 0.3}}, 0.3) is False  # a tie is no improvement
    assert (state.epoch, state.batches_in_epoch, state.best_epoch, state.bad_epochs) == (3, 0, 1, 2)
    assert state.best_record() == {"epoch": 1, "validation": {"qwk": 0.3}}
    assert state.end_epoch({"epoch": 4, "validation": {"qwk": 0.5}}, 0.5) is True
    assert (state.best_epoch, state.bad_epochs, len(state.history)) == (4, 0, 4)


def test_the_state_survives_the_checkpoint_json():
    state = TrainState(step=12)
    again = TrainState(**json.loads(json.dumps(asdict(state))))  # as save_checkpoint / resume_state do
    assert again == state and again.best_qwk == -math.inf
    state.end_epoch({"epoch": 1, "validation": {"qwk": 0.4}}, 0.4)
    assert TrainState(**json.loads(json.dumps(asdict(state)))) == state
