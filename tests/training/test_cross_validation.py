"""`spine-hf cv`: every pooled image predicted once by the fold that did not see it, resumable, and the fold
ensemble as a model folder that averages its members (PyTorch and ONNX) and carries one network for pipeline()."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import REPO

from spine_hf.data.dataset_folder import decode_split, load_grade_dataset
from spine_hf.predict.inference import Predictor
from spine_hf.predict.out_of_fold import OOF_FILE
from spine_hf.training.cross_validation import CV_METRICS_FILE, ENSEMBLE_DIR, HELD_OUT_FILE

FOLDS = 2


@pytest.fixture(scope="module")
def cv_dataset(tmp_path_factory) -> Path:
    """48 phantoms of 64 px of 36 patients (some with two views), split 0.6/0.2/0.2 by patient, converted."""
    from spine_hf.data.convert import convert_to_dataset
    from spine_hf.data.phantoms import make_phantoms
    from spine_hf.data.split import split_dataset

    root = tmp_path_factory.mktemp("cv")
    make_phantoms(root / "pool", per_grade=8, seed=11, size=64)
    split_dataset(root / "pool", root / "split", ratios=(0.6, 0.2, 0.2), seed=1)
    convert_to_dataset(root / "split", root / "ds")
    return root / "ds"


def _command(dataset: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "spine_hf.cv",
            "--config_path", str(REPO / "configs" / "quickstart.yaml"), f"--data.dataset={dataset}",
            f"--train.output_dir={out}", "--model.image_size=64", "--train.epochs=3", "--train.batch_size=8",
            "--train.eval_batch_size=16", "--train.threads=1", "--folds", str(FOLDS), *extra]  # fmt: skip


def _env() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1"}


@pytest.fixture(scope="module")
def cv_run(cv_dataset, tmp_path_factory) -> Path:
    """A whole `cv` of 2 folds, uninterrupted: its folder."""
    out = tmp_path_factory.mktemp("cv-run") / "cv"
    done = subprocess.run(_command(cv_dataset, out), capture_output=True, text=True, env=_env(), timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "out-of-fold over" in done.stdout
    return out


def _oof(out: Path) -> list[dict]:
    with (out / OOF_FILE).open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_every_pooled_image_gets_one_prediction_from_the_fold_that_held_it_out(cv_run, cv_dataset):
    dataset = load_grade_dataset(cv_dataset)
    rows = _oof(cv_run)
    pooled = [f"{split}/{file}" for split in ("train", "validation") for file in dataset[split]["file"]]
    assert sorted(row["file"] for row in rows) == sorted(pooled)  # each once; no test image
    folds_of = defaultdict(set)
    for row in rows:
        folds_of[row["patient"]].add(row["fold"])
        probabilities = [float(row[f"p_{name}"]) for name in ("Healthy", "Doubtful", "Minimal", "Moderate", "Severe")]
        assert sum(probabilities) == pytest.approx(1, abs=1e-5)
        assert int(row["predicted_grade"]) == int(np.argmax(probabilities))
    assert all(len(found) == 1 for found in folds_of.values())
    # The prediction is the held-out fold's best model's, as Predictor gives it.
    held = [row for row in rows if row["fold"] == "1"]
    model = Predictor(cv_run / "fold_1" / "best")
    by_file = {f"{split}/{file}": (split, i) for split in ("train", "validation")
               for i, file in enumerate(dataset[split]["file"])}  # fmt: skip
    images = [decode_split(dataset[by_file[r["file"]][0]].select([by_file[r["file"]][1]]))[0] for r in held[:4]]
    expected = model.probabilities(images)
    got = np.array([[float(r[f"p_{n}"]) for n in ("Healthy", "Doubtful", "Minimal", "Moderate", "Severe")]
                    for r in held[:4]])  # fmt: skip
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_the_metrics_cover_all_images_with_patient_intervals_and_each_folds_value(cv_run):
    metrics = json.loads((cv_run / CV_METRICS_FILE).read_text())
    assert metrics["folds"] == FOLDS and metrics["count"] == len(_oof(cv_run))
    assert metrics["bootstrap"]["resampled"].startswith("patients")
    for name in ("qwk", "accuracy", "balanced_accuracy", "mae"):
        entry = metrics["metrics"][name]
        assert entry["ci95"][0] <= entry["value"] <= entry["ci95"][1]
        assert len(metrics["per_fold"][name]) == FOLDS
        spread = metrics["fold_spread"][name]
        assert spread["min"] <= spread["mean"] <= spread["max"]
    rows = _oof(cv_run)
    accuracy = np.mean([row["grade"] == row["predicted_grade"] for row in rows])
    assert metrics["metrics"]["accuracy"]["value"] == pytest.approx(accuracy)


@pytest.mark.slow
def test_a_killed_cv_resumes_at_its_fold_and_gives_the_same_out_of_fold_file(cv_run, cv_dataset, tmp_path):
    out = tmp_path / "cv"
    process = subprocess.Popen(_command(cv_dataset, out), env=_env(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 300
    while not list((out / "fold_1" / "checkpoints").glob("step_*/trainer_state.json")):
        assert process.poll() is None, "cv ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert (out / "fold_0" / HELD_OUT_FILE).is_file() and not (out / "fold_1" / HELD_OUT_FILE).is_file()
    assert not (out / OOF_FILE).exists()
    fold_0 = (out / "fold_0" / "metrics.json").read_text()

    resumed = subprocess.run(_command(cv_dataset, out), capture_output=True, text=True, env=_env(), timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    log = resumed.stdout + resumed.stderr
    assert "resumed from" in log and "fold_0" not in log.split("resumed from")[1].split("\n")[0]
    assert (out / "fold_0" / "metrics.json").read_text() == fold_0  # the finished fold was not trained again
    assert (out / OOF_FILE).read_bytes() == (cv_run / OOF_FILE).read_bytes()
    again = subprocess.run(_command(cv_dataset, out), capture_output=True, text=True, env=_env(), timeout=600)
    assert again.returncode == 0 and "spine-hf train" not in again.stdout  # nothing left to train


def test_one_fold_alone_then_a_plain_cv_trains_only_the_missing_one(cv_dataset, tmp_path):
    out = tmp_path / "cv"
    first = subprocess.run(_command(cv_dataset, out, "--fold", "1"), capture_output=True, text=True, env=_env(),
                           timeout=600)  # fmt: skip
    assert first.returncode == 0, first.stderr[-3000:]
    assert "still to train: 0" in first.stdout and not (out / "fold_0").exists()
    rest = subprocess.run(_command(cv_dataset, out), capture_output=True, text=True, env=_env(), timeout=600)
    assert rest.returncode == 0, rest.stderr[-3000:]
    assert rest.stdout.count("spine-hf train: world size") == 1 and "output " + str(out / "fold_0") in rest.stdout
    assert (out / OOF_FILE).is_file()


def test_other_settings_in_the_same_folder_are_refused(cv_run, cv_dataset):
    done = subprocess.run(_command(cv_dataset, cv_run, "--optim.lr=0.01"), capture_output=True, text=True,
                          env=_env(), timeout=600)  # fmt: skip
    assert done.returncode == 2 and "other config" in done.stderr
    done = subprocess.run(_command(cv_dataset, cv_run, "--seed", "7"), capture_output=True, text=True, env=_env(),
                          timeout=600)  # fmt: skip
    assert done.returncode == 2 and "other seed" in done.stderr


def _members(cv_run: Path) -> list[Predictor]:
    return [Predictor(cv_run / f"fold_{k}" / "best") for k in range(FOLDS)]


def _images(cv_dataset: Path) -> list:
    return decode_split(load_grade_dataset(cv_dataset)["test"])


def test_the_ensemble_predicts_the_mean_of_its_members(cv_run, cv_dataset):
    ensemble = Predictor(cv_run / ENSEMBLE_DIR)
    assert len(ensemble.members) == FOLDS
    images = _images(cv_dataset)
    mean = np.mean([member.probabilities(images) for member in _members(cv_run)], axis=0)
    np.testing.assert_allclose(ensemble.probabilities(images), mean, atol=1e-6)
    predictions = ensemble.predict(images[:3])
    assert [p.grade for p in predictions] == mean[:3].argmax(axis=1).tolist()


def test_the_ensembles_onnx_graph_averages_its_members_too(cv_run, cv_dataset, tmp_path):
    from spine_hf.publish.export import export_onnx

    report = export_onnx(cv_run / ENSEMBLE_DIR, tmp_path / "onnx", calibration_data=cv_dataset, check_split="test")
    assert report["members"] == FOLDS and report["check"]["same_grade_share"] == 1.0
    exported = Predictor(tmp_path / "onnx")
    assert exported.backend == "onnx"
    images = _images(cv_dataset)
    mean = np.mean([member.probabilities(images) for member in _members(cv_run)], axis=0)
    np.testing.assert_allclose(exported.probabilities(images), mean, atol=1e-5)


def test_the_ensembles_own_network_loads_in_pipeline_and_timm_with_the_grade_predictor_gives_it(cv_run, cv_dataset):
    import timm
    import torch
    from transformers import pipeline

    info = json.loads((cv_run / ENSEMBLE_DIR / "ensemble.json").read_text())
    single = cv_run / info["single_network"] / "best"
    card = (cv_run / ENSEMBLE_DIR / "README.md").read_text()
    assert "not a medical device" in card and "load only this" in card and info["single_network"] in card
    classifier = pipeline("image-classification", model=str(cv_run / ENSEMBLE_DIR), top_k=5)
    network = timm.create_model(f"local-dir:{cv_run / ENSEMBLE_DIR}", pretrained=True).eval()
    alone = Predictor(single)
    images = _images(cv_dataset)
    for image, expected in zip(images, alone.predict(images), strict=True):
        top = max(classifier(image.convert("RGB")), key=lambda entry: entry["score"])
        assert top["label"] == expected.grade_name
        with torch.inference_mode():
            logits = network(torch.from_numpy(alone.pixels([image])))
        assert int(logits.argmax()) == expected.grade


def test_the_ensemble_is_pushable_and_graded_by_the_cli(cv_run, cv_dataset, tmp_path):
    from spine_hf.cli import main
    from spine_hf.publish.hub import push

    plan = dict(push(cv_run / ENSEMBLE_DIR, "org/ensemble", dry_run=True))
    assert "ensemble.json" in plan and "model.safetensors" in plan
    assert len([name for name in plan if name.startswith("members/") and name.endswith("model.safetensors")]) == 1
    assert main(["evaluate", "--model", str(cv_run / ENSEMBLE_DIR), "--data", str(cv_dataset), "--split", "test",
                 "--out", str(tmp_path / "eval"), "--bootstrap", "50"]) == 0  # fmt: skip


def test_calibrating_the_ensemble_fits_on_every_out_of_fold_image_and_scales_every_member(cv_run, cv_dataset, tmp_path):
    from safetensors.torch import load_file

    from spine_hf.models.folder import ModelFolder
    from spine_hf.predict.calibration import calibrate_model

    out = tmp_path / "calibrated"
    # Per grade by default: the out-of-fold predictions hold enough images of every grade.
    report = calibrate_model(cv_run / ENSEMBLE_DIR, cv_dataset, out, coverage=0.8, referral_rate=0.2)
    assert report["count"] == len(_oof(cv_run)) and report["split"].startswith("out-of-fold")
    assert report["grade_ranges"]["method"] == "per_grade" and len(report["grade_ranges"]["per_grade"]) == 5
    info = json.loads((cv_run / ENSEMBLE_DIR / "ensemble.json").read_text())
    assert report["referral"]["held_out"] == f"{info['single_network']} (held out)"
    temperature = report["temperature"]
    before, after = ModelFolder.read(cv_run / ENSEMBLE_DIR), ModelFolder.read(out)
    for old, new in zip(before.member_folders(), after.member_folders(), strict=True):
        key = f"{old.classifier}.weight"
        scaled = load_file(str(old.path / "model.safetensors"))[key] / temperature
        assert np.allclose(load_file(str(new.path / "model.safetensors"))[key].numpy(), scaled.numpy(), atol=1e-6)
    predictor = Predictor(out)
    assert predictor.grade_ranges.method == "per_grade" and predictor.referral is not None
    prediction = predictor.predict(_images(cv_dataset)[:1])[0]
    assert prediction.grade_range is not None and prediction.in_distribution is not None


@pytest.mark.slow
def test_two_cpu_processes_train_the_folds_and_gather_once(cv_dataset, tmp_path):
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]  # fmt: skip
    out = tmp_path / "cv"
    command = [*launcher, *_command(cv_dataset, out, "--train.epochs=2")[1:]]
    done = subprocess.run(command, capture_output=True, text=True, env={**_env(), "ACCELERATE_USE_CPU": "1"},
                          timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "world size 2" in done.stdout and done.stdout.count("out-of-fold over") == 1
    dataset = load_grade_dataset(cv_dataset)
    assert len(_oof(out)) == len(dataset["train"]) + len(dataset["validation"])
    assert Predictor(out / ENSEMBLE_DIR).members and len(Predictor(out / ENSEMBLE_DIR).members) == FOLDS


def test_an_ensemble_file_must_list_distinct_folders_inside_it(cv_run, tmp_path):
    import shutil

    copy = tmp_path / "ensemble"
    shutil.copytree(cv_run / ENSEMBLE_DIR, copy)
    info = json.loads((copy / "ensemble.json").read_text())
    for members in ([], [".", "."], [".", "../elsewhere"], [".", "/elsewhere"]):
        info["members"] = members
        (copy / "ensemble.json").write_text(json.dumps(info))
        with pytest.raises(ValueError, match="distinct folders inside"):
            Predictor(copy)


@pytest.fixture(scope="module")
def distilled_run(cv_run, cv_dataset, tmp_path_factory) -> Path:
    """The finished cross-validation copied, then `cv --distill 0.7` in the copy: only the distilled network trains."""
    import shutil

    out = tmp_path_factory.mktemp("distilled") / "cv"
    shutil.copytree(cv_run, out)
    done = subprocess.run(_command(cv_dataset, out, "--distill", "0.7"), capture_output=True, text=True, env=_env(),
                          timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("spine-hf train: world size") == 1 and "distilled network: held-out QWK" in done.stdout
    return out


def test_distilling_trains_one_network_beside_the_best_fold_and_keeps_the_better(distilled_run, cv_run, cv_dataset):
    metrics = json.loads((distilled_run / CV_METRICS_FILE).read_text())
    entry, fold = metrics["distilled"], int(np.argmax(metrics["per_fold"]["qwk"]))
    assert entry["fold"] == fold and entry["teacher_weight"] == 0.7
    # As many epochs as that fold's schedule, scored on that fold's held-out images.
    assert entry["epochs"] == json.loads((cv_run / f"fold_{fold}" / "results.json").read_text())["epochs"] == 3
    assert len(json.loads((distilled_run / "distilled" / "metrics.json").read_text())) == 3
    with (distilled_run / "distilled" / HELD_OUT_FILE).open(newline="") as handle:
        student = list(csv.DictReader(handle))
    with (cv_run / f"fold_{fold}" / HELD_OUT_FILE).open(newline="") as handle:
        teacher_fold = list(csv.DictReader(handle))
    assert [row["file"] for row in student] == [row["file"] for row in teacher_fold]
    for k in range(FOLDS):  # the folds were not trained again
        assert (distilled_run / f"fold_{k}" / "metrics.json").read_text() == (cv_run / f"fold_{k}" /
                                                                             "metrics.json").read_text()  # fmt: skip
    scores = entry["held_out_qwk"]
    chosen = scores["distilled"] > scores[f"fold_{fold}"]
    info = json.loads((distilled_run / ENSEMBLE_DIR / "ensemble.json").read_text())
    assert entry["own_network"] == chosen
    assert info["single_network"] == ("distilled" if chosen else f"fold_{fold}") and info["single_network_fold"] == fold
    # A plain cv afterwards trains nothing and keeps the distilled network.
    again = subprocess.run(_command(cv_dataset, distilled_run), capture_output=True, text=True, env=_env(),
                           timeout=600)  # fmt: skip
    assert again.returncode == 0 and "spine-hf train" not in again.stdout
    assert json.loads((distilled_run / CV_METRICS_FILE).read_text())["distilled"] == entry


def test_a_distilled_own_network_is_what_pipeline_loads_while_the_folds_are_averaged(distilled_run, cv_dataset,
                                                                                     tmp_path):  # fmt: skip
    """Whichever won on the fixture's tiny folds, the folder is made with the distilled network as its own."""
    import shutil

    from safetensors.torch import load_file
    from transformers import pipeline

    from spine_hf.config import parse_config
    from spine_hf.models.folder import ModelFolder
    from spine_hf.predict.calibration import calibrate_model
    from spine_hf.publish.export import export_onnx
    from spine_hf.training.cross_validation import save_fold_ensemble

    out = tmp_path / "cv"
    shutil.copytree(distilled_run, out)
    metrics = json.loads((out / CV_METRICS_FILE).read_text())
    metrics["ensemble"].update(single_network="distilled", single_network_chosen_by="forced by this test")
    cfg = parse_config(["--config_path", str(out / "fold_0" / "config.yaml")])
    save_fold_ensemble(out, SimpleNamespace(count=FOLDS), cfg, metrics)  # a plan's fold count is all it reads
    ensemble = out / ENSEMBLE_DIR
    info = json.loads((ensemble / "ensemble.json").read_text())
    assert "." not in info["members"] and len(info["members"]) == FOLDS
    assert "`distilled`** (forced by this test)" in (ensemble / "README.md").read_text()

    images = _images(cv_dataset)
    mean = np.mean([member.probabilities(images) for member in _members(out)], axis=0)
    predictor, student = Predictor(ensemble), Predictor(out / "distilled" / "best")
    assert len(predictor.members) == FOLDS
    np.testing.assert_allclose(predictor.probabilities(images), mean, atol=1e-6)
    np.testing.assert_allclose(predictor.features(images)[0], student.features(images)[0], atol=1e-5)
    classifier = pipeline("image-classification", model=str(ensemble), top_k=5)
    for image, expected in zip(images, student.predict(images), strict=True):
        assert max(classifier(image.convert("RGB")), key=lambda entry: entry["score"])["label"] == expected.grade_name

    report = export_onnx(ensemble, tmp_path / "onnx", calibration_data=cv_dataset, check_split="test")
    assert report["members"] == FOLDS
    np.testing.assert_allclose(Predictor(tmp_path / "onnx").probabilities(images), mean, atol=1e-5)

    fitted = calibrate_model(ensemble, cv_dataset, tmp_path / "calibrated", coverage=0.8, referral_rate=0.2)
    assert fitted["referral"]["held_out"] == f"fold_{info['single_network_fold']} (held out)"
    for before in [*ModelFolder.read(ensemble).member_folders(), ModelFolder.read(ensemble)]:
        after = tmp_path / "calibrated" / before.path.relative_to(ensemble)
        key = f"{before.classifier}.weight"
        scaled = load_file(str(before.path / "model.safetensors"))[key] / fitted["temperature"]
        assert np.allclose(load_file(str(after / "model.safetensors"))[key].numpy(), scaled.numpy(), atol=1e-6)
