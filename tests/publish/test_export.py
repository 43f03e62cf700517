"""`spine-hf export`: ONNX graphs that say what PyTorch says, for timm and transformers backbones."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from spine_hf.cli import main
from spine_hf.models.folder import ONNX_FILE
from spine_hf.predict.inference import Predictor
from spine_hf.publish.export import EXPORT_FILE, export_onnx


def _tiny_vit(tmp_path):
    from spine_hf.config import Config, ModelConfig
    from spine_hf.models.build import build_model
    from spine_hf.models.folder import save_for_hub

    torch.manual_seed(0)
    overrides = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
                 "patch_size": 8}  # fmt: skip
    cfg = Config(model=ModelConfig(name="vit", library="transformers", image_size=32, overrides=overrides))
    model, preprocessing = build_model(cfg.model)
    return save_for_hub(model, cfg, preprocessing, tmp_path / "vit")


@pytest.mark.parametrize("kind", ["timm", "transformers"])
def test_the_graph_gives_pytorchs_logits_and_features_for_any_batch(kind, trained_model, phantom_split, tmp_path):
    folder = trained_model if kind == "timm" else _tiny_vit(tmp_path)
    report = export_onnx(folder, tmp_path / "onnx")
    assert report["precision"] == "fp32" and report["library"] == kind
    assert report["check"]["max_abs_probability_difference"] < 1e-4 and report["check"]["same_grade_share"] == 1.0
    assert "synthetic phantoms" in report["check"]["images"]  # no dataset given: says what it checked on
    predictor, exported = Predictor(folder), Predictor(tmp_path / "onnx")
    assert (predictor.backend, exported.backend) == ("torch", "onnx")  # the graph alone: ONNX Runtime
    files = sorted((phantom_split / "train").rglob("*.png"))
    for count in (1, 3, 7):  # the batch dimension is dynamic
        exported.batch_size = predictor.batch_size = count
        features, logits = predictor.features(files[:count])
        onnx_features, onnx_logits = exported.features(files[:count])
        np.testing.assert_allclose(onnx_logits, logits, atol=1e-4)
        np.testing.assert_allclose(onnx_features, features, atol=1e-4)


def test_the_folder_carries_everything_but_the_pytorch_weights(trusted_model, tmp_path, capsys):
    out = tmp_path / "onnx"
    data = trusted_model.parent / "dataset"
    assert main(["export", "--model", str(trusted_model), "--onnx", str(out), "--calibration-data", str(data)]) == 0
    printed = capsys.readouterr().out
    assert "fp32 ONNX model in" in printed and "same grade for 100.00%" in printed and "(validation)" in printed
    names = {p.name for p in out.iterdir()}
    assert {ONNX_FILE, EXPORT_FILE, "config.json", "README.md", "calibration.json", "grade_ranges.json",
            "referral.json", "referral.safetensors", "spine_hf_config.yaml"} <= names  # fmt: skip
    assert "model.safetensors" not in names
    report = json.loads((out / EXPORT_FILE).read_text())
    assert report["check"]["count"] == 40 and report["check"]["qwk_onnx"] == report["check"]["qwk_pytorch"]
    card = (out / "README.md").read_text()
    assert "## ONNX export" in card and "not a medical device" in card
    assert main(["export", "--model", str(trusted_model), "--onnx", str(out)]) == 1  # not replaced without --overwrite
    assert "--overwrite" in capsys.readouterr().err


def test_int8_is_quantised_from_the_calibration_split_and_checked(trusted_model, tmp_path):
    data = trusted_model.parent / "dataset"
    with pytest.raises(ValueError, match="--int8 needs --calibration-data"):
        export_onnx(trusted_model, tmp_path / "no-data", int8=True)
    report = export_onnx(trusted_model, tmp_path / "int8", int8=True, calibration_data=data, calibration_images=16)
    assert report["precision"] == "int8" and report["calibration"] == {"split": "train", "images": 16}
    import onnx

    graph = onnx.load(str(tmp_path / "int8" / ONNX_FILE)).graph
    assert any(node.op_type == "QuantizeLinear" for node in graph.node)  # really quantised: int8 weights
    assert any(init.data_type == onnx.TensorProto.INT8 for init in graph.initializer)
    consumers = [node for node in graph.node if "features" in node.input]
    assert consumers and all(node.op_type not in ("QuantizeLinear", "DequantizeLinear") for node in consumers)
    check = report["check"]
    assert check["count"] == 40 and 0 <= check["max_abs_probability_difference"] < 0.5
    assert ("warning" in report) == (check["same_grade_share"] < 0.99)  # a graph that changes grades says so
    assert "static int8" in (tmp_path / "int8" / "README.md").read_text()


def test_an_export_below_the_same_grade_floor_is_written_with_a_warning(trained_model, tmp_path, monkeypatch, capsys):
    from spine_hf.publish import export

    monkeypatch.setattr(export, "SAME_GRADE_FLOOR", 1.01)  # no graph keeps more than every grade
    assert main(["export", "--model", str(trained_model), "--onnx", str(tmp_path / "onnx")]) == 0
    assert "warning: the fp32 graph gives another grade than PyTorch" in capsys.readouterr().err
    assert "check it on your data" in json.loads((tmp_path / "onnx" / EXPORT_FILE).read_text())["warning"]
