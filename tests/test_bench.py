"""`python -m bench` end to end at toy sizes: every ratio is measured, printed beside its goal and in the JSON."""

from __future__ import annotations

import json
import math

import pytest

from bench.__main__ import main
from bench.report import Ratio


def test_ratio_verdicts():
    assert Ratio("a", 0.97, 0.95, "higher", "").meets is True
    assert Ratio("a", 0.60, 0.5, "lower", "").meets is False
    assert Ratio("a", None, 0.5, "lower", "").meets is None
    assert "MISSES goal" in Ratio("a", 0.2, 0.5, "higher", "").line()


@pytest.mark.slow
def test_bench_all_and_quality_write_every_ratio(phantom_split, tmp_path, capsys):
    common = ["--model", "test_resnet", "--image-size", "32", "--batch-size", "4", "--data", str(phantom_split),
              "--work", str(tmp_path / "work")]  # fmt: skip
    assert main(["all", *common, "--steps", "2", "--repeats", "2", "--json", str(tmp_path / "all.json")]) == 0
    printed = capsys.readouterr().out
    ratios = json.loads((tmp_path / "all.json").read_text())["ratios"]
    assert set(ratios) >= {
        "convert.vs_plain_pil_loop", "train.data_path_vs_model_only", "train.step_flop_utilisation",
        "predict.one_image_speedup", "predict.batch64_speedup",
    }  # fmt: skip
    for key, entry in ratios.items():
        assert math.isfinite(entry["value"]) and entry["value"] > 0, key
        assert entry["better"] in ("higher", "lower") and entry["what"]
        assert entry["meets_goal"] == (entry["value"] >= entry["goal"] if entry["better"] == "higher"
                                       else entry["value"] <= entry["goal"])  # fmt: skip
        assert key in printed
    numbers = json.loads((tmp_path / "all.json").read_text())["numbers"]
    assert numbers["predict.one_image_speedup_ceiling"] > 0 and numbers["predict.forward_gflops_per_image"] > 0
    assert main(["quality", *common, "--budget-minutes", "0.05", "--json", str(tmp_path / "q.json")]) == 0
    quality = json.loads((tmp_path / "q.json").read_text())
    assert quality["numbers"]["quality.usual_recipe_curve_seconds_qwk"]
    assert quality["numbers"]["quality.project_curve_seconds_qwk"]
    assert "quality.time_to_usual_best_qwk" in quality["ratios"]
    assert quality["ratios"]["quality.training_step_speedup"]["value"] > 0


def test_the_baseline_is_the_example_scripts_recipe():
    """The usual recipe decodes with PIL per sample and uses the classic torchvision transforms."""
    import inspect

    from bench import baseline

    source = inspect.getsource(baseline)
    for piece in ('load_dataset("imagefolder"', "with_transform", "RandomResizedCrop(size)", "RandomHorizontalFlip()",
                  "ToTensor()", 'image.convert("RGB")', 'name="linear"', "num_warmup_steps=0"):  # fmt: skip
        assert piece in source, piece
