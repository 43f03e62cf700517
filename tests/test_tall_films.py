"""Tall films end to end: 16-bit 2.6:1 radiographs through convert -> train -> the saved folder, and every loader
(pipeline, AutoModelForImageClassification, timm, Predictor, ONNX Runtime) resizing them exactly as training did;
the decoded cache keyed on both sides; model folders saved before inputs could be tall loading unchanged."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO
from PIL import Image

from spine_hf.data.imaging import decode, decode_image
from spine_hf.grades import GRADE_NAMES, grade_folder
from spine_hf.predict.inference import Predictor

HEIGHT, WIDTH = 104, 40  # 2.6:1, as a full-spine AP film
LEGACY = REPO / "tests" / "fixtures" / "square-folders"
TINY_VIT = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 48,
            "patch_size": 8}  # fmt: skip


@pytest.fixture(scope="module")
def tall_dataset(tmp_path_factory) -> tuple[Path, Path]:
    """AP phantoms at exactly 2.6:1, every one a 16-bit PNG, in a split tree (4/2/2 per grade), and its dataset."""
    from spine_hf.data.convert import convert_to_dataset
    from spine_hf.data.phantoms_ap import render_ap, sample_ap_anatomy

    root = tmp_path_factory.mktemp("tall")
    counts = {"train": 4, "val": 2, "test": 2}
    for grade in range(5):
        number = 0
        for split, count in counts.items():
            folder = root / "tree" / split / grade_folder(grade)
            folder.mkdir(parents=True)
            for _ in range(count):
                number += 1
                rng = np.random.default_rng([7, grade, number])
                anatomy = sample_ap_anatomy(rng, grade) | {"aspect": HEIGHT / WIDTH}
                pixels = render_ap(anatomy, rng, HEIGHT)
                Image.fromarray(np.round(pixels * 65535).astype(np.uint16)).save(folder / f"p{grade}{number:02d}.png")
    report = convert_to_dataset(root / "tree", root / "dataset")
    assert report.sizes["train"]["aspect"]["median"] == 2.6  # recorded in image_sizes.json too
    return root / "tree", root / "dataset"


def _train(dataset: Path, out: Path, *overrides: str) -> Path:
    from accelerate.state import AcceleratorState

    from spine_hf.config import parse_config
    from spine_hf.training.loop import train

    AcceleratorState._reset_state(True)
    args = ["--config_path", str(REPO / "configs" / "quickstart.yaml"), f"--data.dataset={dataset}",
            f"--train.output_dir={out}", "--train.epochs=2", "--train.batch_size=8", "--train.ema_decay=0",
            "--train.mixed_precision=no", "--data.progressive_scale=0.5", *overrides]  # fmt: skip
    train(parse_config(args))
    return out / "best"


@pytest.fixture(scope="module")
def tall_models(tmp_path_factory, tall_dataset) -> dict[str, Path]:
    """A timm CNN whose shape comes from the data (model.aspect=data) and a tiny transformers ViT at [64, 24]."""
    _, dataset = tall_dataset
    root = tmp_path_factory.mktemp("tall-runs")
    cnn = _train(dataset, root / "cnn", "--model.name=test_efficientnet", "--model.image_size=40",
                 "--model.aspect=data")  # fmt: skip
    vit = _train(dataset, root / "vit", "--model.name=vit", "--model.library=transformers",
                 "--model.image_size=[64, 24]", "--data.progressive_scale=0",
                 f"--model.overrides={TINY_VIT}")  # fmt: skip
    return {"timm": cnn, "transformers": vit}


def test_progressive_resizing_is_refused_for_a_vit_that_takes_one_size(tall_dataset, tmp_path):
    from spine_hf.config import ConfigError

    _, dataset = tall_dataset
    with pytest.raises(ConfigError, match="progressive_scale=0"):
        _train(dataset, tmp_path / "vit", "--model.name=vit", "--model.library=transformers",
               "--model.image_size=[64, 24]", f"--model.overrides={TINY_VIT}")  # fmt: skip


@pytest.mark.slow
def test_the_data_chooses_the_cnns_shape_and_the_saved_files_carry_both_sides(tall_models):
    import yaml

    cnn, vit = tall_models["timm"], tall_models["transformers"]
    # 40^2 pixels at 2.6:1, in steps of 16: 80 x 32, saved in the resolved config as the shape, not the request.
    model = yaml.safe_load((cnn / "spine_hf_config.yaml").read_text())["model"]
    assert model["image_size"] == [80, 32] and model["aspect"] == "fixed"
    assert json.loads((cnn / "config.json").read_text())["pretrained_cfg"]["input_size"] == [3, 80, 32]
    processor = json.loads((vit / "preprocessor_config.json").read_text())
    assert processor["size"] == {"height": 64, "width": 24} and not processor.get("do_center_crop")
    assert json.loads((vit / "config.json").read_text())["image_size"] == [64, 24]
    history = json.loads((cnn.parent / "metrics.json").read_text())  # progressive resizing scaled both sides
    assert history[0]["shape"] == [32, 16] and history[-1]["shape"] == [80, 32]


@pytest.mark.slow
@pytest.mark.parametrize("library", ["timm", "transformers"])
def test_every_loader_grades_tall_16_bit_films_as_training_did(library, tall_models, tall_dataset, tmp_path):
    """pipeline(), AutoModelForImageClassification (+ its image processor), timm (+ its data config), the Predictor
    and the ONNX export: the same probabilities within 1e-4, so the same grades, on the same 16-bit files."""
    import torch
    from transformers import AutoImageProcessor, AutoModelForImageClassification, pipeline

    from spine_hf.publish.export import export_onnx

    folder = tall_models[library]
    tree, _ = tall_dataset
    files = sorted((tree / "test").rglob("*.png"))
    assert all(decode(f).bits == 16 and decode(f).image.size == (WIDTH, HEIGHT) for f in files)
    canonical = [decode_image(f) for f in files]  # the project's decoder: pipeline() itself would saturate 16 bits
    ours = Predictor(folder).probabilities(files)
    assert not np.allclose(ours, ours[0])  # the films are told apart: the comparisons below can fail

    by_name = [{s["label"]: s["score"] for s in scores}
               for scores in pipeline("image-classification", model=str(folder), top_k=5)(canonical)]  # fmt: skip
    loaders = {"pipeline": np.array([[scores[name] for name in GRADE_NAMES] for scores in by_name])}
    processor = AutoImageProcessor.from_pretrained(folder)
    auto = AutoModelForImageClassification.from_pretrained(folder).eval()
    with torch.inference_mode():
        pixels = processor(images=[image.convert("RGB") for image in canonical], return_tensors="pt")["pixel_values"]
        assert tuple(pixels.shape[2:]) == (Predictor(folder).preprocessing.size)
        loaders["AutoModelForImageClassification"] = auto(pixel_values=pixels).logits.softmax(1).numpy()
        if library == "timm":
            import timm

            net = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
            transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=net))
            batch = torch.stack([transform(image.convert("RGB")) for image in canonical])
            loaders["timm"] = net(batch).softmax(1).numpy()
    export_onnx(folder, tmp_path / "onnx")
    loaders["ONNX Runtime"] = Predictor(tmp_path / "onnx").probabilities(files)
    for name, probabilities in loaders.items():
        np.testing.assert_allclose(probabilities, ours, atol=1e-4, err_msg=name)
        assert (probabilities.argmax(1) == ours.argmax(1)).all(), name


@pytest.mark.slow
def test_grad_cam_lies_on_the_tall_film_at_its_own_aspect(tall_models, tall_dataset):
    import torch

    from spine_hf.predict.explain import _as_grid, grad_cam, overlay

    tree, _ = tall_dataset
    file = sorted((tree / "test").rglob("*.png"))[0]
    for folder in tall_models.values():
        heat, _ = grad_cam(Predictor(folder), file)
        assert heat.shape == (HEIGHT, WIDTH) and np.isfinite(heat).all() and 0 <= heat.min() <= heat.max() <= 1
        assert overlay(file, heat).size == (WIDTH, HEIGHT)
    # A ViT's tokens at 64 x 24 with 8-pixel patches: a class token, then 8 rows of 3 patches, in order.
    tokens = torch.arange(1 + 8 * 3, dtype=torch.float32)[:, None].repeat(1, 4)
    grid = _as_grid(tokens, (64, 24))
    assert grid.shape == (4, 8, 3) and grid[0, 0].tolist() == [1, 2, 3] and grid[0, 7].tolist() == [22, 23, 24]


def test_the_decoded_cache_of_a_split_at_two_shapes_is_two_files(tall_dataset, tmp_path):
    from spine_hf.data.dataset_folder import load_grade_dataset
    from spine_hf.training.decoded_cache import cache_file, open_decoded

    _, dataset = tall_dataset
    split = load_grade_dataset(dataset)["train"]
    tall, square = open_decoded(split, (80, 32), tmp_path), open_decoded(split, 32, tmp_path)
    assert tall.path != square.path and "80x32px" in tall.path.name and "-32px-" in square.path.name
    assert tall.squares.shape == (len(split), 80, 32) and square.squares.shape == (len(split), 32, 32)
    # The same sides the other way round are another shape too, and a square's key is the one it always had.
    assert cache_file(split, (32, 80), tmp_path) != tall.path and cache_file(split, (32, 32), tmp_path) == square.path
    again = open_decoded(split, (80, 32), tmp_path)
    assert again.decoded == 0 and np.array_equal(again.squares, tall.squares)


@pytest.mark.parametrize("name", ["timm-square", "vit-square"])
def test_a_square_folder_saved_before_tall_inputs_loads_and_predicts_the_same(name, tmp_path):
    """The folders in tests/data were written by spine-hf before inputs could be tall, with the probabilities its
    Predictor gave then; today's Predictor and pipeline() read them as squares and say the same."""
    from transformers import pipeline

    folder = shutil.copytree(LEGACY / name, tmp_path / name)
    expected = np.array(json.loads((LEGACY / "expected.json").read_text())[name])
    images = sorted(LEGACY.glob("image*.png"))
    predictor = Predictor(folder)
    assert predictor.preprocessing.size == (32, 32)
    np.testing.assert_allclose(predictor.probabilities(images), expected, atol=1e-6)
    scores = pipeline("image-classification", model=str(folder), top_k=5)([decode_image(f) for f in images])
    theirs = np.array([[{s["label"]: s["score"] for s in row}[grade] for grade in GRADE_NAMES] for row in scores])
    np.testing.assert_allclose(theirs, expected, atol=1e-4)
