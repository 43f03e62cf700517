"""The demo as a Hugging Face Space: `spine-hf push --space ORG/NAME --model REPO_ID [--dry-run]`.

A Space is a repo the Hub runs: a ``README.md`` whose front matter says ``sdk: gradio`` and
``app_file: app.py``, the app, and a ``requirements.txt``. spine-hf is not a package on PyPI, so the
Space carries the ``spine_hf`` package this installation runs, beside an ``app.py`` that builds the
project's own demo (`demo.build_app`, without its publishing tab) on the model repo, loaded by its id.
``requirements.txt`` pins what the app imports to the versions installed here, the ones the tests
ran with. The torch backend needs torch, torchvision, timm and transformers; a model exported with
`spine-hf export` (``--backend onnx``) needs only ONNX Runtime, so its Space builds and starts far
faster. The Space is private unless told otherwise; a private model also needs an ``HF_TOKEN`` secret
in the Space's settings, which nothing here ever handles.
"""

from __future__ import annotations

import os
import shutil
import sys
from importlib import metadata
from pathlib import Path

from spine_hf.config import BACKENDS
from spine_hf.outputs import staged_folder
from spine_hf.publish.hub import upload_plan

# Distributions the running app imports, for each backend (tests/test_space.py checks them against a run).
SPACE_PACKAGES = {
    "common": ("gradio", "huggingface_hub", "numpy", "pillow", "pydicom", "safetensors", "scipy"),
    "torch": ("torch", "torchvision", "timm", "transformers"),
    "onnx": ("onnxruntime",),
}
MODEL_ENV = "SPINE_HF_MODEL"


def write_space(model_repo: str, out: str | os.PathLike, *, backend: str = "torch") -> list[tuple[str, int]]:
    """Write the Space's files for `model_repo` into the new folder `out`; returns (path, size) of each."""
    _check_repo_id(model_repo, "--model")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, not {backend!r}")
    import spine_hf

    with staged_folder(out, replaceable=False) as staging:
        installed = Path(spine_hf.__file__).parent
        for source in sorted(installed.rglob("*.py")):  # the package and its wings, without caches
            target = staging / "spine_hf" / source.relative_to(installed)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
        (staging / "app.py").write_text(_app(model_repo), encoding="utf-8")
        (staging / "requirements.txt").write_text(requirements(backend), encoding="utf-8")
        (staging / "README.md").write_text(_card(model_repo, backend), encoding="utf-8")
    return upload_plan(out)


def requirements(backend: str) -> str:
    """requirements.txt: every distribution the app needs, pinned to the version installed here."""
    names = [*SPACE_PACKAGES["common"], *SPACE_PACKAGES[backend]]
    lines = []
    for name in names:
        try:
            lines.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError as err:
            extra = " (pip install 'spine-hf[onnx]')" if name == "onnxruntime" else ""
            raise RuntimeError(f"{name} is not installed here, so its version cannot be pinned{extra}") from err
    return "\n".join(lines) + "\n"


def push_space(space_id: str, model_repo: str, *, backend: str = "torch", private: bool = True,
               dry_run: bool = False, save_to: str | os.PathLike | None = None,
               token: str | None = None) -> list[tuple[str, int]]:  # fmt: skip
    """Create (or update) the Gradio Space `space_id` serving `model_repo`; returns its files. With `dry_run`
    nothing is uploaded; `save_to` keeps the files (e.g. to run `python app.py` locally first)."""
    import tempfile

    _check_repo_id(space_id, "--space")
    with tempfile.TemporaryDirectory(prefix="spine-hf-space-") as scratch:
        folder = Path(save_to) if save_to is not None else Path(scratch) / "space"
        plan = write_space(model_repo, folder, backend=backend)
        if dry_run:
            return plan
        from huggingface_hub import HfApi

        api = HfApi(token=token)
        api.create_repo(space_id, repo_type="space", space_sdk="gradio", private=private, exist_ok=True)
        api.upload_folder(repo_id=space_id, repo_type="space", folder_path=str(folder),
                          commit_message=f"spine-hf demo for {model_repo}")  # fmt: skip
    return plan


def _check_repo_id(repo_id: str, option: str) -> None:
    if repo_id.count("/") != 1 or not all(repo_id.split("/")) or Path(repo_id).exists():
        hint = ""
        if option == "--model":
            hint = "; push the model folder first: spine-hf push --model DIR --repo-id ORG/NAME"
        raise ValueError(f"{option} {repo_id!r}: give a Hub repo id, ORG/NAME{hint}")


def _app(model_repo: str) -> str:
    return f'''"""spine-hf demo Space for {model_repo}. Research use only, not a medical device.

Written by `spine-hf push --space`. Runs locally too: `pip install -r requirements.txt && python app.py`.
"""

import os

from spine_hf.app.demo import build_app

demo = build_app(os.environ.get("{MODEL_ENV}", "{model_repo}"), publish=False)

if __name__ == "__main__":
    demo.launch()
'''


def _card(model_repo: str, backend: str) -> str:
    name = model_repo.split("/")[1]
    runtime = "ONNX Runtime (the model's `model.onnx`)" if backend == "onnx" else "PyTorch"
    return f"""---
title: spine-hf {name}
emoji: 🩻
colorFrom: gray
colorTo: blue
sdk: gradio
sdk_version: {metadata.version("gradio")}
python_version: "{sys.version_info.major}.{sys.version_info.minor}"
app_file: app.py
pinned: false
models:
- {model_repo}
tags:
- spine-hf
- medical-imaging
- research-only
---

# {name}: radiograph severity grading

> **Research use only, not a medical device.** This demo grades radiographs into five ordinal
> severity grades (0 Healthy, 1 Doubtful, 2 Minimal, 3 Moderate, 4 Severe) for research on methods
> and data. It is not cleared or validated for clinical use; do not use it to diagnose or treat anyone.

The model is [{model_repo}](https://huggingface.co/{model_repo}), run with {runtime}. Uploads (PNG,
JPEG, 16-bit PNG, DICOM) are decoded by spine-hf's own decoder. With a calibrated model the
headline gives a grade range that holds the true grade for the stated share of radiographs like the
model's validation images, and an image unlike its training radiographs is reported instead of
graded. This Space was written by `spine-hf push --space` and carries the `spine_hf` package it runs;
set the `{MODEL_ENV}` variable to serve another model repo.
"""
