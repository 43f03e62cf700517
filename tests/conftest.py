"""Shared fixtures: tiny phantoms, the real knee data when it is there, and no network."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# Tests never reach the Hub: everything they load is local.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

sys.path.insert(0, str(Path(__file__).parent))  # for tests/factories.py

REPO = Path(__file__).resolve().parents[1]
KNEE = REPO.parent / "shared" / "data" / "knee-kl224"


@pytest.fixture(scope="session")
def phantom_pool(tmp_path_factory) -> Path:
    """A pool of 64-pixel phantoms, 6 per grade, with patients.csv. Do not modify it."""
    from spine_hf.phantoms import make_phantoms

    out = tmp_path_factory.mktemp("phantoms") / "pool"
    make_phantoms(out, per_grade=6, seed=3, size=64)
    return out


@pytest.fixture(scope="session")
def phantom_split(tmp_path_factory, phantom_pool) -> Path:
    """`phantom_pool` split 0.6/0.2/0.2 by patient. Do not modify it."""
    from spine_hf.dataset_tools import split_dataset

    out = tmp_path_factory.mktemp("phantoms") / "split"
    split_dataset(phantom_pool, out, ratios=(0.6, 0.2, 0.2), seed=0)
    return out


@pytest.fixture
def knee() -> Path:
    """The real knee radiographs beside the repository; skips when they are not there."""
    if not (KNEE / "val").is_dir():
        pytest.skip(f"real data not found at {KNEE}")
    return KNEE
