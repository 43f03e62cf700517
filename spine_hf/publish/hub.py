"""Publishing a model folder on the Hugging Face Hub: check it, list it, upload it.

The folder itself is written offline by `models.folder.save_for_hub`; this module only checks that it
loads as a five-grade model and carries its model card, then calls `create_repo(exist_ok=True)` and
`upload_folder`. The token comes from the argument, ``HF_TOKEN`` or ``hf auth login`` and is only
ever handed to huggingface_hub.
"""

from __future__ import annotations

import os
from pathlib import Path


def upload_plan(folder: str | os.PathLike) -> list[tuple[str, int]]:
    """(path in the repo, size in bytes) for every file `push` would upload."""
    folder = Path(folder)
    return sorted((p.relative_to(folder).as_posix(), p.stat().st_size) for p in folder.rglob("*")
                  if p.is_file() and not p.name.startswith("."))  # fmt: skip


def check_pushable(folder: str | os.PathLike) -> None:
    """Refuse a folder that does not load as a five-grade model or lacks a model card with the disclaimer."""
    from spine_hf.predict.inference import Predictor

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
