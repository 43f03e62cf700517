"""Predictor and `spine-hf predict`: every format of the same picture gets the same grade."""

from __future__ import annotations

import json

import numpy as np
import pytest
from factories import write_dicom
from PIL import Image

from spine_hf.cli import main
from spine_hf.data.imaging import decode_image
from spine_hf.grades import GRADE_NAMES
from spine_hf.predict.inference import Predictor


@pytest.fixture
def same_picture(tmp_path, phantom_split):
    """One phantom as 8-bit PNG, 16-bit PNG, DICOM (12-bit MONOCHROME1) and high-quality JPEG."""
    pixels = np.asarray(decode_image(next((phantom_split / "test").rglob("*.png"))))
    files = {"png": tmp_path / "a.png", "png16": tmp_path / "a16.png", "jpg": tmp_path / "a.jpg"}
    Image.fromarray(pixels).save(files["png"])
    Image.fromarray(pixels.astype(np.uint16) * 257).save(files["png16"])
    Image.fromarray(pixels).save(files["jpg"], quality=100)
    stored = np.round(pixels / 255 * 4095).astype(np.uint16)
    files["dcm"] = write_dicom(tmp_path / "a.dcm", 4095 - stored, "MONOCHROME1", BitsStored=12)
    return files


def test_every_format_of_the_same_picture_gets_the_same_grade(trained_model, same_picture):
    predictor = Predictor(trained_model)
    results = dict(zip(same_picture, predictor.predict(list(same_picture.values())), strict=True))
    assert len({r.grade for r in results.values()}) == 1
    for name in ("png16", "dcm"):  # lossless twins: the same probabilities
        np.testing.assert_allclose(results[name].probabilities, results["png"].probabilities, atol=1e-5)
    np.testing.assert_allclose(results["jpg"].probabilities, results["png"].probabilities, atol=0.05)
    assert results["png"].grade_name == GRADE_NAMES[results["png"].grade]
    assert sum(results["png"].probabilities) == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize("folder", ["trained_model", "trusted_model"])
def test_predictor_matches_pipeline(folder, phantom_split, request):
    """Also for a folder with grade ranges and referral: pipeline() does not read them and is unchanged."""
    from transformers import pipeline

    model = request.getfixturevalue(folder)
    files = sorted((phantom_split / "test").rglob("*.png"))[:4]
    ours = Predictor(model).predict(files)
    theirs = pipeline("image-classification", model=str(model), top_k=5)([decode_image(f) for f in files])
    for mine, scores in zip(ours, theirs, strict=True):
        by_name = {s["label"]: s["score"] for s in scores}
        np.testing.assert_allclose(mine.probabilities, [by_name[n] for n in GRADE_NAMES], atol=2e-3)
    if folder == "trusted_model":  # the same folder without the files: pipeline() says exactly the same
        import shutil

        bare = request.getfixturevalue("tmp_path") / "bare"
        shutil.copytree(model, bare)
        for name in ("grade_ranges.json", "referral.json", "referral.safetensors"):
            (bare / name).unlink()
        assert pipeline("image-classification", model=str(bare), top_k=5)([decode_image(f) for f in files]) == theirs


def test_predict_cli_writes_one_json_line_per_file_and_reports_bad_ones(trained_model, same_picture, tmp_path,
                                                                         capsys):  # fmt: skip
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    files = [str(p) for p in same_picture.values()] + [str(bad)]
    assert main(["predict", "--model", str(trained_model), *files]) == 1
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [line["file"] for line in lines] == files
    assert len({line["grade"] for line in lines[:-1]}) == 1
    assert "text file" in lines[-1]["error"] and "grade" not in lines[-1]


def test_a_folder_that_is_not_a_grading_model_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a model folder"):
        Predictor(tmp_path / "nothing" / "here")


def test_predict_cli_batches_files_and_keeps_their_order_around_bad_ones(trained_model, phantom_split, tmp_path,
                                                                         capsys):  # fmt: skip
    good = [str(p) for p in sorted((phantom_split / "train").rglob("*.png"))[:5]]
    (tmp_path / "empty.png").write_bytes(b"")
    files = [*good[:3], str(tmp_path / "empty.png"), *good[3:]]  # the bad file inside the second batch of 2
    assert main(["predict", "--model", str(trained_model), "--batch-size", "2", *files]) == 1
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [line["file"] for line in lines] == files
    assert "empty" in lines[3]["error"]
    one_by_one = [Predictor(trained_model).predict([file])[0] for file in good]
    batched = [line for line in lines if "error" not in line]
    for alone, together in zip(one_by_one, batched, strict=True):
        assert alone.grade == together["grade"]
        np.testing.assert_allclose(alone.probabilities, together["probabilities"], atol=1e-5)


def test_precision_auto_is_bf16_exactly_where_the_hardware_has_it(trained_model):
    from spine_hf.models.build import native_bf16

    assert Predictor(trained_model, precision="auto").precision == ("bf16" if native_bf16("cpu") else "fp32")
    assert Predictor(trained_model).precision == "fp32"
    with pytest.raises(ValueError, match="precision must be one of"):
        Predictor(trained_model, precision="fp16")


def test_a_folder_without_ranges_or_referral_predicts_exactly_as_before(trained_model, same_picture):
    predictor = Predictor(trained_model)
    assert predictor.grade_ranges is None and predictor.referral is None
    prediction = predictor.predict([same_picture["png"]])[0]
    assert prediction.to_json().keys() == {"grade", "grade_name", "probabilities"}
    assert prediction.grade_range is None and prediction.in_distribution is None
    np.testing.assert_allclose(prediction.probabilities, predictor.probabilities([same_picture["png"]])[0], atol=1e-6)


def test_predict_prints_the_range_and_refers_a_noise_frame(trusted_model, phantom_split, tmp_path, capsys):
    noise = tmp_path / "noise.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (96, 96), dtype=np.uint8)).save(noise)
    phantoms = [str(p) for p in sorted((phantom_split / "test").rglob("*.png"))]
    assert main(["predict", "--model", str(trusted_model), *phantoms, str(noise)]) == 0
    *graded, frame = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    for line in graded:
        low, high = line["grade_range"]
        assert low <= line["grade"] <= high and line["coverage"] == 0.8
        assert line["in_distribution"] == (line["ood_score"] <= line["ood_threshold"])
        assert ("warning" in line) == (not line["in_distribution"])
    assert sum(line["in_distribution"] for line in graded) >= len(graded) - 1  # phantoms, like its training images
    assert frame["in_distribution"] is False and frame["ood_score"] > 2 * frame["ood_threshold"]
    assert "does not look like the radiographs the model was trained on" in frame["warning"]
    assert frame["grade_name"] == GRADE_NAMES[frame["grade"]]  # still there for scripts, flagged


@pytest.mark.parametrize("kind", ["timm", "transformers"])
def test_features_are_what_the_classifier_layer_receives(kind, tmp_path, phantom_split):
    import torch

    from spine_hf.config import Config, ModelConfig
    from spine_hf.models.build import build_model
    from spine_hf.models.folder import save_for_hub

    torch.manual_seed(0)
    model_cfg = ModelConfig(name="test_resnet", image_size=64) if kind == "timm" else ModelConfig(
        name="vit", library="transformers", image_size=32, overrides={"hidden_size": 32, "num_hidden_layers": 2,
        "num_attention_heads": 2, "intermediate_size": 64, "patch_size": 8})  # fmt: skip
    cfg = Config(model=model_cfg)
    model, preprocessing = build_model(cfg.model)
    predictor = Predictor(save_for_hub(model, cfg, preprocessing, tmp_path / kind), batch_size=3)
    files = sorted((phantom_split / "train").rglob("*.png"))[:5]
    features, logits = predictor.features(files)
    assert features.shape == (5, 96 if kind == "timm" else 32)
    classifier = predictor.folder.classifier_module(predictor.model)
    weight, bias = classifier.weight.detach().numpy(), classifier.bias.detach().numpy()
    np.testing.assert_allclose(features @ weight.T + bias, logits, atol=1e-4)
    np.testing.assert_allclose(logits, predictor.logits(files), atol=1e-5)


def test_the_onnx_backend_gives_what_torch_gives(trusted_model, exported_model, phantom_split):
    """Same decoder, resize, grade, probabilities, range and referral from the exported graph."""
    noise = np.random.default_rng(1).integers(0, 256, (80, 80), dtype=np.uint8)
    images = [*sorted((phantom_split / "test").rglob("*.png"))[:6], noise]
    torch_run, onnx_run = Predictor(trusted_model, batch_size=4), Predictor(exported_model, batch_size=4)
    assert (torch_run.backend, onnx_run.backend) == ("torch", "onnx") and onnx_run.model is None
    for flip_tta in (False, True):
        for ours, theirs in zip(onnx_run.predict(images, flip_tta), torch_run.predict(images, flip_tta), strict=True):
            assert (ours.grade, ours.grade_range, ours.in_distribution) == (
                theirs.grade, theirs.grade_range, theirs.in_distribution)  # fmt: skip
            np.testing.assert_allclose(ours.probabilities, theirs.probabilities, atol=1e-5)
            assert ours.ood_score == pytest.approx(theirs.ood_score, rel=1e-4)
    assert onnx_run.predict([noise])[0].in_distribution is False  # the referral works from the graph's features


def test_a_backend_the_folder_cannot_serve_is_refused_with_the_fix(trained_model, exported_model, monkeypatch):
    with pytest.raises(FileNotFoundError, match="spine-hf export --model"):
        Predictor(trained_model, backend="onnx")
    with pytest.raises(FileNotFoundError, match="ONNX export: use the onnx backend"):
        Predictor(exported_model, backend="torch")
    with pytest.raises(ValueError, match="for the torch backend"):
        Predictor(exported_model, precision="bf16")
    with pytest.raises(ValueError, match="backend must be one of"):
        Predictor(exported_model, backend="tensorrt")
    import sys

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if the onnx extra were not installed
    with pytest.raises(RuntimeError, match=r"pip install 'spine-hf\[onnx\]'"):
        Predictor(exported_model)


@pytest.mark.parametrize("backend", ["onnx", "torch"])
def test_predict_imports_only_what_its_backend_needs(backend, trained_model, exported_model, phantom_split):
    """`spine-hf predict` as its own process: the onnx backend never imports torch or transformers; the torch
    backend on a timm folder imports neither transformers nor anything else grading does not need."""
    import subprocess
    import sys

    model = exported_model if backend == "onnx" else trained_model
    script = """
import json, sys
from spine_hf.cli import main
code = main(["predict", "--model", sys.argv[1], sys.argv[2]])
heavy = ["torch", "timm", "transformers", "datasets", "evaluate", "gradio", "matplotlib", "accelerate", "scipy",
         "sklearn", "pandas", "onnxruntime"]
print(json.dumps({"code": code, "imported": [name for name in heavy if name in sys.modules]}))
"""
    image = next((phantom_split / "test").rglob("*.png"))
    run = subprocess.run([sys.executable, "-c", script, str(model), str(image)], capture_output=True, text=True,
                         timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    prediction, report = (json.loads(line) for line in run.stdout.strip().splitlines()[-2:])
    assert prediction["grade_name"] in GRADE_NAMES and report["code"] == 0
    assert report["imported"] == (["onnxruntime"] if backend == "onnx" else ["torch", "timm"])
