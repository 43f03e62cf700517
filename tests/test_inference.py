"""Predictor and `spine-hf predict`: every format of the same picture gets the same grade."""

from __future__ import annotations

import json

import numpy as np
import pytest
from factories import write_dicom
from PIL import Image

from spine_hf.cli import main
from spine_hf.grades import GRADE_NAMES
from spine_hf.imaging import decode_image
from spine_hf.inference import Predictor


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


def test_predictor_matches_pipeline(trained_model, phantom_split):
    from transformers import pipeline

    files = sorted((phantom_split / "test").rglob("*.png"))[:4]
    ours = Predictor(trained_model).predict(files)
    theirs = pipeline("image-classification", model=str(trained_model), top_k=5)([decode_image(f) for f in files])
    for mine, scores in zip(ours, theirs, strict=True):
        by_name = {s["label"]: s["score"] for s in scores}
        np.testing.assert_allclose(mine.probabilities, [by_name[n] for n in GRADE_NAMES], atol=2e-3)


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
    from spine_hf.model import native_bf16

    assert Predictor(trained_model, precision="auto").precision == ("bf16" if native_bf16("cpu") else "fp32")
    assert Predictor(trained_model).precision == "fp32"
    with pytest.raises(ValueError, match="precision must be one of"):
        Predictor(trained_model, precision="fp16")
