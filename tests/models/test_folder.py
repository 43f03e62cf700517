"""Saved model folders load in pipeline(), AutoModelForImageClassification and (timm) timm itself,
the pixels they are fed match what training fed the model, and `ModelFolder` reads back what was saved."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from factories import hub_cache

from spine_hf.config import Config, DataConfig, ModelConfig
from spine_hf.data.imaging import decode_image
from spine_hf.grades import GRADE_NAMES
from spine_hf.models.build import build_model
from spine_hf.models.folder import load_weights, save_for_hub

TINY_VIT = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "patch_size": 8,
}


def _model_cfg(kind: str) -> ModelConfig:
    if kind == "timm":
        return ModelConfig(name="test_resnet", image_size=64)
    return ModelConfig(name="vit", library="transformers", image_size=32, overrides=dict(TINY_VIT))


@pytest.fixture(params=["timm", "transformers"])
def saved(request, tmp_path):
    torch.manual_seed(0)
    cfg = Config(model=_model_cfg(request.param))
    model, preprocessing = build_model(cfg.model)
    model.eval()
    folder = save_for_hub(model, cfg, preprocessing, tmp_path / "best", metrics={"qwk": 0.5})
    return request.param, model, preprocessing, folder


def test_folder_loads_in_pipeline_auto_class_and_timm(saved, phantom_pool):
    from transformers import AutoModelForImageClassification, pipeline

    kind, model, preprocessing, folder = saved
    assert {"config.json", "model.safetensors", "spine_hf_config.yaml", "metrics.json"} <= {
        p.name for p in folder.iterdir()
    }
    config = json.loads((folder / "config.json").read_text())
    assert "num_classes" not in config.get("model_args", {})  # transformers 5 rejects it there
    image = decode_image(next(phantom_pool.rglob("*.png")))
    classifier = pipeline("image-classification", model=str(folder), top_k=5)
    scores = classifier(image)
    assert sorted(s["label"] for s in scores) == sorted(GRADE_NAMES)
    assert sum(s["score"] for s in scores) == pytest.approx(1.0, abs=1e-4)

    auto = AutoModelForImageClassification.from_pretrained(str(folder)).eval()
    assert auto.config.id2label == dict(enumerate(GRADE_NAMES))
    pixels = torch.randn(2, 3, *preprocessing.size)
    with torch.inference_mode():
        expected = model(pixels)
        torch.testing.assert_close(auto(pixel_values=pixels).logits, expected, rtol=1e-4, atol=1e-4)
        if kind == "timm":
            import timm

            native = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
            assert native.num_classes == 5
            torch.testing.assert_close(native(pixels), expected, rtol=1e-4, atol=1e-4)


def test_pipeline_sees_the_pixels_training_evaluates_on(saved, phantom_split):
    """The eval data path and the saved processor agree to float rounding on real files."""
    from datasets import load_from_disk  # noqa: F401  (dataset comes from convert below)
    from transformers import pipeline

    from spine_hf.data.convert import convert_to_dataset
    from spine_hf.data.dataset_folder import load_grade_dataset
    from spine_hf.training.transforms import GradeImages

    kind, model, preprocessing, folder = saved
    out = folder.parent / "ds"
    convert_to_dataset(phantom_split, out)
    split = load_grade_dataset(out)["test"]
    ours = GradeImages(split, preprocessing, DataConfig(), train=False)
    processor = pipeline("image-classification", model=str(folder)).image_processor
    for index in range(3):
        image = split[index]["image"].convert("RGB")
        theirs = processor(images=image, return_tensors="pt")["pixel_values"][0]
        square, _ = ours[index]
        assert square.dtype == torch.uint8  # normalised on the device, as training's evaluation does
        pixels = ours.preprocessing.normalise(square[None])[0]
        torch.testing.assert_close(pixels, theirs, rtol=0, atol=2e-2)
        assert (pixels - theirs).abs().mean() < 2e-3


def test_load_weights_restores_a_saved_model(saved):
    kind, model, preprocessing, folder = saved
    fresh, _ = build_model(_model_cfg(kind))
    load_weights(fresh, folder)
    fresh.eval()
    pixels = torch.randn(1, 3, *preprocessing.size)
    with torch.inference_mode():
        assert np.allclose(fresh(pixels).numpy(), model(pixels).numpy(), atol=1e-5)


def test_saving_twice_replaces_the_folder_whole(saved, tmp_path):
    kind, model, preprocessing, folder = saved
    (folder / "stale.txt").write_text("from an older save")
    save_for_hub(model, Config(model=_model_cfg(kind)), preprocessing, folder)
    assert not (folder / "stale.txt").exists()
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]


@pytest.mark.slow
def test_loading_by_repo_id_from_an_offline_hub_cache(trained_model, phantom_split, tmp_path):
    """pipeline, AutoModelForImageClassification, timm and Predictor all load `org/name` from a cache laid
    out as huggingface_hub lays it out, with HF_HUB_OFFLINE=1, and agree on the top grade."""
    import os
    import subprocess
    import sys

    cache = hub_cache(tmp_path / "hub", "spine-org/grader", trained_model)
    files = [str(p) for p in sorted((phantom_split / "test").rglob("*.png"))[:5]]
    script = f"""
import json, sys, timm, torch
from transformers import AutoModelForImageClassification, pipeline
from spine_hf.data.imaging import decode_image
from spine_hf.predict.inference import Predictor
files = {files!r}
images = [decode_image(f) for f in files]
classify = pipeline("image-classification", model="spine-org/grader")
pipe = [max(r, key=lambda s: s["score"])["label"] for r in classify(images)]
predictor = Predictor("spine-org/grader")
pixels = torch.from_numpy(predictor.pixels(images))
auto = AutoModelForImageClassification.from_pretrained("spine-org/grader").eval()
native = timm.create_model("hf-hub:spine-org/grader", pretrained=True).eval()
names = auto.config.id2label
with torch.inference_mode():
    result = {{"pipeline": pipe, "auto": [names[int(i)] for i in auto(pixel_values=pixels).logits.argmax(1)],
              "timm": [names[int(i)] for i in native(pixels).argmax(1)],
              "predictor": [p.grade_name for p in predictor.predict(files)]}}
print(json.dumps(result))
"""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_HOME": str(tmp_path / "home")}
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["pipeline"] == result["auto"] == result["timm"] == result["predictor"]
    assert len(result["pipeline"]) == 5


def test_a_failed_save_leaves_the_previous_best_folder_intact(saved, monkeypatch):
    import errno

    import spine_hf.models.folder as model_folder

    kind, model, preprocessing, folder = saved
    before = {p.name: p.read_bytes() for p in folder.iterdir()}

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(model_folder, "_save_timm", disk_full)
    monkeypatch.setattr(model_folder, "_save_transformers", disk_full)
    with pytest.raises(OSError, match="No space left"):
        save_for_hub(model, Config(model=_model_cfg(kind)), preprocessing, folder)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no partial folder left


def test_the_folder_says_what_it_holds(saved):
    from safetensors.torch import load_file

    from spine_hf.models.folder import ModelFolder, open_model_folder

    kind, model, preprocessing, folder = saved
    read = ModelFolder.read(folder)
    assert read == open_model_folder(str(folder))
    assert read.library == kind and read.preprocessing == preprocessing
    weights = load_file(str(folder / "model.safetensors"))
    assert weights[f"{read.classifier}.weight"].shape[0] == 5  # the five-grade head, by the name the folder gives
    with pytest.raises(FileNotFoundError, match="not a model folder"):
        open_model_folder(folder / "missing")
