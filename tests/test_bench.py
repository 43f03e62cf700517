"""`python -m bench` end to end at toy sizes: every ratio is measured, printed beside its goal and in the JSON."""

from __future__ import annotations

import json
import math

import pytest
from conftest import REPO

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
    assert main(["all", *common, "--steps", "2", "--repeats", "2", "--cold-runs", "1",
                 "--json", str(tmp_path / "all.json")]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    ratios = json.loads((tmp_path / "all.json").read_text())["ratios"]
    assert set(ratios) >= {
        "convert.vs_plain_pil_loop", "train.data_path_vs_model_only", "train.step_flop_utilisation",
        "predict.one_image_speedup", "predict.batch64_speedup", "predict.one_image_speedup_onnx",
        "predict.one_image_speedup_int8", "predict.batch64_speedup_int8", "cold.torch_vs_pipeline",
        "cold.onnx_vs_pipeline",
    }  # fmt: skip
    for key, entry in ratios.items():
        assert math.isfinite(entry["value"]) and entry["value"] > 0, key
        assert entry["better"] in ("higher", "lower") and entry["what"]
        assert entry["meets_goal"] == (entry["value"] >= entry["goal"] if entry["better"] == "higher"
                                       else entry["value"] <= entry["goal"])  # fmt: skip
        assert key in printed
    numbers = json.loads((tmp_path / "all.json").read_text())["numbers"]
    context = json.loads((tmp_path / "all.json").read_text())["context"]
    assert set(context["cpu_isa"]) <= {
        "avx2",
        "avx512f",
        "avx512_bf16",
        "avx512_vnni",
        "avx_vnni",
        "amx_bf16",
        "amx_int8",
    }
    assert numbers["predict.one_image_speedup_ceiling"] > 0 and numbers["predict.forward_gflops_per_image"] > 0
    assert (
        numbers["predict.onnx_vs_fp32_max_probability_difference"] < 1e-4
        and numbers["predict.onnx_vs_fp32_same_grade"] == 1
    )
    assert 0 <= numbers["predict.int8_vs_fp32_same_grade"] <= 1 and len(numbers["cold.seconds"]["onnx"]) == 1
    capsys.readouterr()
    assert main(["quality", *common, "--budget-minutes", "0.05", "--precision", "fp32",
                 "--json", str(tmp_path / "q.json")]) == 0  # fmt: skip
    quality = json.loads((tmp_path / "q.json").read_text())
    assert quality["numbers"]["quality.precision"] == {"usual": "fp32", "project": "fp32"}
    assert quality["context"]["project_precision"] == "fp32" and "native_bf16" in quality["context"]
    assert "mixed precision no" in capsys.readouterr().out  # the project's run really computed in fp32
    assert quality["numbers"]["quality.usual_recipe_curve_seconds_qwk"]
    assert quality["numbers"]["quality.project_curve_seconds_qwk"]
    assert "quality.time_to_usual_best_qwk" in quality["ratios"]
    assert quality["ratios"]["quality.training_step_speedup"]["value"] > 0
    assert quality["numbers"]["quality.project_epochs_and_sides"]
    lengths = quality["numbers"]["quality.project_schedule_length_after_each_epoch"]  # refitted after every epoch
    assert len(lengths) == len(quality["numbers"]["quality.project_epochs_and_sides"])
    assert (
        quality["numbers"]["quality.usual_trained_seconds"] > 0
        and quality["numbers"]["quality.project_trained_seconds"] > 0
    )


@pytest.mark.slow
def test_bench_levers_runs_each_lever_alone_and_together(phantom_split, tmp_path, capsys):
    assert main(["levers", "--model", "test_resnet", "--image-size", "64", "--batch-size", "4", "--data",
                 str(phantom_split), "--work", str(tmp_path / "work"), "--budget-minutes", "0.05", "--precision",
                 "fp32", "--levers", "progressive,lr", "--json", str(tmp_path / "l.json")]) == 0  # fmt: skip
    numbers = json.loads((tmp_path / "l.json").read_text())["numbers"]
    assert list(numbers["levers.arms"]) == ["before", "progressive", "lr", "together"]
    assert numbers["levers.arms"]["together"] == [*numbers["levers.arms"]["progressive"], *numbers["levers.arms"]["lr"]]
    assert set(numbers["levers.progressive"]["epochs_and_sides"]) <= {48, 64}  # 0.75 of 64 px, then 64
    assert numbers["levers.progressive"]["epochs_and_sides"][0] == 48
    assert set(numbers["levers.before"]["epochs_and_sides"]) == {64}
    for arm in ("before", "progressive", "lr", "together"):
        entry = numbers[f"levers.{arm}"]
        assert entry["curve_seconds_qwk"] and -1 <= entry["best_model_qwk_with_flip"] <= 1
    assert "levers.compile" not in numbers  # not asked for
    printed = capsys.readouterr().out
    assert "together: time to the usual best" in printed
    with pytest.raises(SystemExit, match="unknown"):
        main(["levers", "--levers", "warp", "--data", str(phantom_split), "--work", str(tmp_path / "work")])


def test_the_baseline_is_the_example_scripts_recipe():
    """The usual recipe decodes with PIL per sample and uses the classic torchvision transforms (its linear
    schedule is checked against transformers' number by number in the test below)."""
    import inspect

    from bench import baseline

    source = inspect.getsource(baseline)
    for piece in ('load_dataset("imagefolder"', "with_transform", "RandomResizedCrop(size)", "RandomHorizontalFlip()",
                  "ToTensor()", 'image.convert("RGB")', "LambdaLR(optimizer, schedule)"):  # fmt: skip
        assert piece in source, piece


def test_large_radiographs_are_full_size_8_and_16_bit(phantom_split, tmp_path):
    import numpy as np
    from PIL import Image

    from bench.large import MIN_HEIGHT, MIN_WIDTH, make_large_tree
    from spine_hf.data.imaging import decode_image

    made = make_large_tree(phantom_split, tmp_path / "large", 3, 1)
    files = sorted((tmp_path / "large").rglob("*.png"))
    assert made["images"] == len(files) == 4 and made["bytes"] == sum(f.stat().st_size for f in files)
    modes = set()
    for file in files:
        with Image.open(file) as image:
            assert image.width >= MIN_WIDTH and image.height >= MIN_HEIGHT
            modes.add(image.mode)
        assert np.asarray(decode_image(file)).std() > 5  # an image, not a blank frame
    assert modes == {"L", "I;16"}
    # The grade of each source survives (the folders of the split tree).
    assert {f.parent.parent.name for f in files} == {"train", "val"}
    assert make_large_tree(phantom_split, tmp_path / "large", 3, 1) == made  # made once


def test_memory_watch_reads_this_process(tmp_path):
    import os

    import numpy as np

    from bench.large import _cache_mapping, _status

    cache = tmp_path / "squares" / "train-8px-0.npy"
    cache.parent.mkdir()
    np.save(cache, np.ones((64, 128, 128), np.uint8))
    squares = np.load(cache, mmap_mode="r")
    assert int(squares[:32].sum()) == 32 * 128 * 128  # touch half of it
    resident, proportional = _cache_mapping(os.getpid())
    assert 32 * 128 * 128 <= resident <= cache.stat().st_size + 4096 and 0 < proportional <= resident
    status = _status(os.getpid())
    assert status["VmHWM"] >= status["RssAnon"] > 0


@pytest.mark.slow
def test_bench_large_runs_two_processes_twice(phantom_split, tmp_path):
    common = ["--model", "test_resnet", "--image-size", "32", "--batch-size", "2", "--data", str(phantom_split),
              "--work", str(tmp_path / "work"), "--large-images", "16"]  # fmt: skip
    assert main(["large", *common, "--json", str(tmp_path / "large.json")]) == 0
    report = json.loads((tmp_path / "large.json").read_text())
    numbers, ratios = report["numbers"], report["ratios"]
    assert numbers["large.images"] == 17
    for name in ("first", "second", "model_only"):
        ranks = numbers[f"large.{name}.memory_mb"]
        assert sorted(m["rank"] for m in ranks) == [0, 1], name  # two processes were watched
        assert all(m["peak_rss"] >= m["peak_anonymous"] > 0 for m in ranks), name
    assert numbers["large.second_data_setup_seconds"] < numbers["large.first_data_setup_seconds"]
    assert "mapped from the decoded cache" in (tmp_path / "work" / "large" / "run-second.log").read_text()
    assert {"large.rank0_read_all_anonymous_added_mb", "large.rank1_read_all_anonymous_added_mb"} <= set(numbers)
    assert set(ratios) == {"large.second_setup_seconds", "large.second_vs_first_setup",
                           "large.second_process_adds_vs_cache", "large.epoch_vs_model_only",
                           "large.data_path_vs_model_only"}  # fmt: skip
    assert all(math.isfinite(entry["value"]) for entry in ratios.values())


@pytest.mark.slow
def test_bench_trust_measures_coverage_and_referral(trusted_model, trained_model, tmp_path, capsys):
    tree = trusted_model.parent / "split"  # 40 training and 40 validation phantoms
    args = ["trust", "--data", str(tree), "--model-dir", str(trained_model), "--halvings", "3",
            "--work", str(tmp_path / "work"), "--json", str(tmp_path / "trust.json")]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    result = json.loads((tmp_path / "trust.json").read_text())
    ratios, numbers = result["ratios"], result["numbers"]
    for kind in ("phantoms", "photos", "inverted", "rotated", "blank_noise"):
        assert 0 <= ratios[f"trust.auroc_{kind}"]["value"] <= 1 and f"trust.auroc_{kind}" in printed
        assert set(numbers["trust.auroc"]) == {"max_softmax", "energy", "mahalanobis"}
    for coverage in (80, 90, 95):
        assert 0 <= ratios[f"trust.coverage_gap_{coverage}"]["value"] <= 1
    assert numbers["trust.counts"]["validation"] == 40 and numbers["trust.counts"]["photos"] == 200
    shipped = numbers["trust.ranges"]["shipped@0.9"]
    assert 1 <= shipped["mean_width"] <= 5 and len(shipped["per_grade_mean_width"]) == 5
    # Halves of 20 images hold too few for 1 % and 2 % referral rates: those are not measured, not made up.
    assert list(numbers["trust.referred"]) == ["0.05"] and ratios["trust.referred_validation"]["value"] is None


def test_every_lever_parses_on_the_lever_base():
    from bench.quality import LEVER_BASE, LEVERS
    from spine_hf.config import parse_config

    for name, overrides in LEVERS.items():
        cfg = parse_config(["--config_path", str(REPO / "configs/knee-cpu.yaml"), *LEVER_BASE, *overrides])
        assert cfg.data.full_side_min_scale == (0.85 if name == "crop" else 0), name
        assert cfg.data.full_side_rotate == (5 if name == "rotate" else -1), name


def test_sizing_warns_of_an_arm_far_from_the_budget(capsys):
    from bench.quality import check_sizing
    from bench.report import Report

    report = Report({})
    fitted, misread = {"epochs": 14, "epochs_at_its_speed": 14}, {"epochs": 13, "epochs_at_its_speed": 14}
    check_sizing(report, "quality", 600.0, usual={"trained": 590.0, **fitted}, misread={"trained": 560.0, **misread},
                 short={"trained": 500.0}, long={"trained": 700.0})  # fmt: skip
    printed = capsys.readouterr().out
    assert report.numbers["quality.short_trained_seconds"] == 500.0
    assert "usual " not in printed
    assert "WARNING: misread's schedule ended at 13 epochs, but at the speed it trained 14" in printed
    assert "WARNING: short trained 8.3 of 10 min" in printed
    assert "note: long trained 11.7 of 10 min" in printed and "not counted" in printed


def test_the_project_arm_refits_its_schedule_to_the_pace_its_epochs_trained_at():
    from types import SimpleNamespace

    from bench.quality import refit
    from spine_hf.config import parse_config
    from spine_hf.training.optim import WarmupCosine

    sizing = parse_config(["--config_path", str(REPO / "configs" / "knee-cpu.yaml"), "--train.epochs=1000",
                           "--data.progressive_scale=0", "--data.full_side_min_scale=0",
                           "--data.full_side_rotate=-1"])  # fmt: skip
    ips = {(128, 128): 100.0}  # the probe: 10 s an epoch of 1,000 images

    def after(seconds: list[float], budget: float) -> int:
        state = SimpleNamespace(history=[{"side": 128, "train_seconds": t} for t in seconds], epochs=None)
        run = SimpleNamespace(state=state, schedule=WarmupCosine(0, 10, 30, 0.01))
        refit(run, sizing, ips, 1000, budget)
        assert run.schedule.epochs == state.epochs
        return state.epochs

    assert after([10.0, 10.0], 300.0) == 30  # as probed
    assert after([20.0, 20.0], 300.0) == 2 + 260 // 20  # twice as slow: 13 more in the 260 s left
    assert after([5.0], 300.0) == 1 + 295 // 5  # twice as fast
    assert after([10.0, 10.0, 10.0], 25.0) == 3  # past the budget: the run ends with this epoch


def test_the_usual_recipes_schedule_is_the_scripts_linear_decay():
    import torch
    from transformers import get_scheduler

    from bench.baseline import LinearDecay

    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    script = get_scheduler("linear", optimizer=optimizer, num_warmup_steps=0, num_training_steps=100).lr_lambdas[0]
    ours = LinearDecay(100)
    assert [ours(step) for step in range(120)] == [script(step) for step in range(120)]
    ours.total = 50  # refitted: the same decay over the new length
    assert ours(25) == 0.5 and ours(50) == 0.0


@pytest.mark.timeout(600)  # four short trainings and the whole comparison
def test_bench_cv_compares_one_split_with_out_of_fold_and_the_ensemble(tmp_path, capsys):
    args = ["cv", "--model", "test_resnet", "--phantoms-per-grade", "14", "--folds", "2", "--budget-minutes", "0.15",
            "--precision", "fp32", "--work", str(tmp_path / "work"), "--json", str(tmp_path / "cv.json"),
            "--distill", "0.5"]  # fmt: skip
    assert main(args) == 0
    result = json.loads((tmp_path / "cv.json").read_text())
    ratios, numbers = result["ratios"], result["numbers"]
    assert ratios["cv.time_vs_single_runs"]["value"] > 0 and "cv.time_vs_single_runs" in capsys.readouterr().out
    scores = numbers["cv.held_back"]["scores"]
    assert set(scores) == {"ensemble", "single_run", "fold_0", "fold_1", "distilled"}
    assert all(-1 <= s["qwk"]["value"] <= 1 for s in scores.values())
    assert numbers["cv.held_back"]["own_network"] in scores
    assert set(numbers["cv.grade_ranges_on_held_back"]) == {"single_on_validation", "ensemble_oof_marginal",
                                                            "ensemble_oof_per_grade"}  # fmt: skip
    # The held-back patients are in neither pool split.
    from spine_hf.data.dataset_folder import load_grade_dataset

    data = load_grade_dataset(tmp_path / "work" / "cv" / "dataset")
    pooled = set(data["train"]["patient"]) | set(data["validation"]["patient"])
    assert data["test"].num_rows and not pooled & set(data["test"]["patient"])
    # The distilled network against the fold it trained beside.
    entry = numbers["cv.distilled"]
    assert {"distilled", f"fold_{entry['fold']}"} == set(entry["held_back"]) and entry["teacher_weight"] == 0.5
    assert "cv.distilled_qwk_gain_over_its_fold" in ratios


def test_bench_shapes_compares_a_square_with_the_films_aspect_on_the_same_folds(tmp_path, capsys):
    """Three cross-validations of tall AP phantoms at one budget; a second call measures the same runs again."""
    from spine_hf.data.convert import convert_to_dataset
    from spine_hf.data.phantoms import make_phantoms
    from spine_hf.data.split import split_dataset

    make_phantoms(tmp_path / "pool", per_grade=4, seed=2, size=96, view="ap")
    split_dataset(tmp_path / "pool", tmp_path / "tree", ratios=(0.7, 0.3, 0.0), seed=0)
    convert_to_dataset(tmp_path / "tree", tmp_path / "dataset")
    args = ["shapes", "--model", "test_resnet", "--data", str(tmp_path / "dataset"), "--image-size", "64",
            "--folds", "2", "--budget-minutes", "0.05", "--precision", "fp32", "--work", str(tmp_path / "work"),
            "--json", str(tmp_path / "shapes.json")]  # fmt: skip
    assert main(args) == 0
    numbers = json.loads((tmp_path / "shapes.json").read_text())["numbers"]
    assert numbers["shapes.square"]["shape"] == [64, 64]
    tall, more = numbers["shapes.aspect"]["shape"], numbers["shapes.aspect_2.5x"]["shape"]
    assert tall[0] > 2 * tall[1] and more[0] * more[1] > 1.5 * tall[0] * tall[1]
    for name in ("aspect", "aspect_2.5x"):
        gain = numbers[f"shapes.{name}_minus_square_oof_qwk"]
        assert gain["ci95"][0] <= gain["value"] <= gain["ci95"][1]
    capsys.readouterr()
    assert main([*args, "--reuse-runs"]) == 0  # nothing trains: the same numbers from the same folders
    again = json.loads((tmp_path / "shapes.json").read_text())["numbers"]
    assert again["shapes.aspect_minus_square_oof_qwk"] == numbers["shapes.aspect_minus_square_oof_qwk"]
    assert "aspect - square: out-of-fold QWK" in capsys.readouterr().out
