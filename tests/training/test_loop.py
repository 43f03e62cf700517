"""Training end to end on tiny phantoms: timm and ViT backbones, resume after kill -9, two processes."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import tiny_run_args as _args

from spine_hf.config import ConfigError, parse_config
from spine_hf.data.dataset_folder import load_grade_dataset
from spine_hf.grades import GRADE_NAMES

TINY_VIT = "{hidden_size: 32, num_hidden_layers: 2, num_attention_heads: 2, intermediate_size: 64, patch_size: 8}"


def _run(args: list[str], launcher: list[str] | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    command = (launcher or [sys.executable]) + ["-m", "spine_hf.train", *args]
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run(command, capture_output=True, text=True, env=full_env, timeout=600)


def _history(out: Path) -> list[dict]:
    return json.loads((out / "metrics.json").read_text())


def test_timm_backbone_trains_and_its_folder_loads_in_pipeline_and_timm(tmp_path, tiny_dataset):
    import timm
    from transformers import pipeline

    from spine_hf.training.loop import train

    out = tmp_path / "run"
    # Progressive resizing: the first epoch trains at 32 px, the last at the 64 px the model is saved with.
    args = _args(tiny_dataset, out, "--train.epochs=2", "--train.tensorboard=true", "--data.progressive_scale=0.5")
    result = train(parse_config(args))
    dataset = load_grade_dataset(tiny_dataset)
    assert result["validation"]["count"] == dataset["validation"].num_rows
    assert result["test"]["count"] == dataset["test"].num_rows
    history = _history(out)
    assert [r["epoch"] for r in history] == [1, 2]
    assert [r["side"] for r in history] == [32, 64]
    assert set(history[0]["validation"]) >= {
        "qwk",
        "accuracy",
        "balanced_accuracy",
        "macro_f1",
        "mae",
        "confusion_matrix",
    }
    assert (out / "config.yaml").is_file() and (out / "best" / "spine_hf_config.yaml").is_file()
    scores = pipeline("image-classification", model=str(out / "best"), top_k=5)(dataset["test"][0]["image"])
    assert sorted(s["label"] for s in scores) == sorted(GRADE_NAMES)
    assert timm.create_model(f"local-dir:{out / 'best'}", pretrained=True).num_classes == 5
    assert list((out / "logs").rglob("events.out.tfevents.*"))


def test_vit_from_transformers_trains_and_loads_in_pipeline(tmp_path, tiny_dataset):
    from transformers import AutoModelForImageClassification, pipeline

    from spine_hf.training.loop import train

    out = tmp_path / "vit"
    args = _args(tiny_dataset, out, "--train.epochs=1", "--model.name=vit", "--model.library=transformers",
                 "--model.image_size=32", f"--model.overrides={TINY_VIT}", "--model.channels_last=false",
                 "--optim.lr=0.001")  # fmt: skip
    result = train(parse_config(args))
    assert result["validation"]["count"] == load_grade_dataset(tiny_dataset)["validation"].num_rows
    model = AutoModelForImageClassification.from_pretrained(str(out / "best"))
    assert model.config.model_type == "vit" and model.config.id2label[4] == "Severe"
    image = load_grade_dataset(tiny_dataset)["test"][0]["image"]
    assert len(pipeline("image-classification", model=str(out / "best"), top_k=5)(image)) == 5


@pytest.mark.slow
def test_kill_after_a_checkpoint_then_resume_matches_an_uninterrupted_run(tmp_path, tiny_dataset):
    epochs = "--train.epochs=8"
    straight = tmp_path / "straight"
    assert _run(_args(tiny_dataset, straight, epochs)).returncode == 0

    killed = tmp_path / "killed"
    command = [sys.executable, "-m", "spine_hf.train", *_args(tiny_dataset, killed, epochs)]
    process = subprocess.Popen(command, env={**os.environ, "HF_HUB_OFFLINE": "1"},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 300
    while not list((killed / "checkpoints").glob("step_*/trainer_state.json")):
        assert process.poll() is None, "training ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    interrupted_epochs = len(_history(killed))
    assert interrupted_epochs < 8

    resumed = _run(_args(tiny_dataset, killed, epochs, "--train.resume=true"))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in resumed.stdout + resumed.stderr
    a, b = _history(straight), _history(killed)
    assert [(r["epoch"], r["step"]) for r in a] == [(r["epoch"], r["step"]) for r in b]
    assert [sorted(r) for r in a] == [sorted(r) for r in b]
    for x, y in zip(a, b, strict=True):  # CPU, same seed, same data order: the same numbers
        assert y["train_loss"] == pytest.approx(x["train_loss"], rel=1e-4)
        assert y["validation"]["confusion_matrix"] == x["validation"]["confusion_matrix"]
    assert json.loads((killed / "results.json").read_text()) == json.loads((straight / "results.json").read_text())


@pytest.mark.slow
def test_two_cpu_processes_see_every_validation_image_once(tmp_path, tiny_dataset):
    validation = load_grade_dataset(tiny_dataset)["validation"].num_rows
    assert validation % 2 == 1  # an odd count: padding for the second process would show up
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]  # fmt: skip
    two = tmp_path / "two"
    run = _run(_args(tiny_dataset, two, "--train.epochs=2"), launcher, env={"ACCELERATE_USE_CPU": "1"})
    assert run.returncode == 0, run.stderr[-3000:]
    assert "world size 2" in run.stdout
    one = tmp_path / "one"  # the same global batch (2 x 8) in one process
    assert _run(_args(tiny_dataset, one, "--train.epochs=2", "--train.batch_size=16")).returncode == 0
    a, b = _history(one), _history(two)
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for x, y in zip(a, b, strict=True):
        assert x["validation"]["count"] == y["validation"]["count"] == validation
        assert y["train_loss"] == pytest.approx(x["train_loss"], rel=0.1)


def test_a_corrupt_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, tiny_dataset, caplog):
    from spine_hf.training.loop import train

    out = tmp_path / "run"
    train(parse_config(_args(tiny_dataset, out, "--train.epochs=3")))
    checkpoints = sorted((out / "checkpoints").glob("step_*"))
    assert len(checkpoints) == 2  # keep_checkpoints=2: epochs 2 and 3
    weights = checkpoints[-1] / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # damaged on disk
    caplog.set_level("WARNING")
    result = train(parse_config(_args(tiny_dataset, out, "--train.epochs=4", "--train.resume=true")))
    assert "falling back to" in caplog.text and checkpoints[0].name in caplog.text
    assert [r["epoch"] for r in _history(out)] == [1, 2, 3, 4]  # epoch 3 redone from epoch 2's checkpoint
    assert result["validation"]["count"] == load_grade_dataset(tiny_dataset)["validation"].num_rows


class _Exploit:
    """A pickle that runs code when loaded without weights_only (it would create a file)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_checkpoint_carrying_a_malicious_pickle_is_never_executed(tmp_path, tiny_dataset, caplog):
    import torch

    from spine_hf.training.loop import train

    out = tmp_path / "run"
    train(parse_config(_args(tiny_dataset, out, "--train.epochs=2")))
    latest = sorted((out / "checkpoints").glob("step_*"))[-1]
    marker = tmp_path / "pwned"
    for name in ("optimizer.bin", "scheduler.bin", "random_states_0.pkl"):
        torch.save({"state": _Exploit(marker)}, latest / name)
    # The EMA is safetensors, not a custom pickle (accelerate loads those with weights_only=False).
    assert (latest / "ema.safetensors").is_file() and not list(latest.glob("custom_checkpoint_*"))
    caplog.set_level("WARNING")
    train(parse_config(_args(tiny_dataset, out, "--train.epochs=3", "--train.resume=true")))
    assert not marker.exists()
    assert "falling back to" in caplog.text and latest.name in caplog.text


@pytest.mark.slow
def test_one_and_two_processes_score_the_same_weights_image_by_image(tmp_path, tiny_dataset):
    """The same weights (a ViT without BatchNorm, learning rate 0) evaluated by 1 and by 2 processes give
    the same prediction for every validation image, in the same order."""
    frozen = ["--train.epochs=1", "--model.name=vit", "--model.library=transformers", "--model.image_size=32",
              f"--model.overrides={TINY_VIT}", "--model.channels_last=false", "--optim.lr=1e-12",
              "--optim.weight_decay=0", "--optim.min_lr_ratio=1", "--data.test_split="]  # fmt: skip
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]  # fmt: skip
    two, one = tmp_path / "two", tmp_path / "one"
    run = _run(_args(tiny_dataset, two, *frozen), launcher, env={"ACCELERATE_USE_CPU": "1"})
    assert run.returncode == 0, run.stderr[-3000:]
    assert _run(_args(tiny_dataset, one, *frozen)).returncode == 0
    a = json.loads((one / "best_predictions.json").read_text())
    b = json.loads((two / "best_predictions.json").read_text())
    assert len(a["predictions"]) == load_grade_dataset(tiny_dataset)["validation"].num_rows
    assert a["predictions"] == b["predictions"]
    assert _history(one)[0]["validation"] == _history(two)[0]["validation"]


def test_the_epochs_that_fit_count_the_cheaper_early_epochs_of_progressive_resizing(tmp_path, tiny_dataset):
    from spine_hf.training.loop import fitting_epochs, shape

    def seconds_at(size: tuple[int, int]) -> float:  # 10 s an epoch at 128 x 128 px, less with fewer pixels
        return 10 * size[0] * size[1] / 128**2

    plain = parse_config(_args(tiny_dataset, tmp_path, "--train.epochs=100", "--model.image_size=128"))
    assert fitting_epochs(plain, seconds_at, 300) == 30
    assert fitting_epochs(plain, seconds_at, 300, done=4) == 34  # 300 s after the first 4 epochs
    assert fitting_epochs(plain, seconds_at, 5) == 0  # not even one
    cfg = parse_config(_args(tiny_dataset, tmp_path, "--train.epochs=100", "--model.image_size=128",
                             "--data.progressive_scale=0.75"))  # fmt: skip
    epochs = fitting_epochs(cfg, seconds_at, 300)

    def cost(epochs: int) -> float:
        return sum(seconds_at(shape(cfg, epoch, epochs)) for epoch in range(epochs))

    assert 30 < epochs < 100 and cost(epochs) <= 300 and all(cost(more) > 300 for more in range(epochs + 1, 101))
    capped = parse_config(_args(tiny_dataset, tmp_path, "--train.epochs=12", "--model.image_size=128",
                                "--data.progressive_scale=0.75"))  # fmt: skip
    assert fitting_epochs(capped, seconds_at, 300) == 12  # never more than train.epochs


def test_a_hook_after_each_epoch_may_change_the_length_of_the_run(tmp_path, tiny_dataset):
    from spine_hf.training.loop import fit, prepare

    out = tmp_path / "run"
    cfg = parse_config(_args(tiny_dataset, out, "--train.epochs=5", "--train.time_budget_minutes=0"))
    seen = []

    def shorten(run) -> None:  # as `bench quality` refits its project arm
        seen.append(len(run.state.history))
        run.state.epochs = run.schedule.epochs = 2

    fit(prepare(cfg), shorten)
    assert seen == [1, 2] and len(_history(out)) == 2


@pytest.mark.slow
@pytest.mark.parametrize("progressive", [0.0, 0.5])
def test_a_time_budget_fits_the_whole_schedule_into_it(tmp_path, tiny_dataset, capsys, progressive):
    import torch

    from spine_hf.training.loop import train

    out = tmp_path / "run"
    budget_minutes, lr, min_ratio = 0.25, 0.003, 0.01
    start = time.monotonic()
    cfg = parse_config(_args(tiny_dataset, out, "--train.epochs=1000", f"--train.time_budget_minutes={budget_minutes}",
                             f"--optim.lr={lr}", f"--optim.min_lr_ratio={min_ratio}",
                             f"--data.progressive_scale={progressive}"))  # fmt: skip
    train(cfg)
    elapsed = time.monotonic() - start
    # The budget holds, with some room for a noisy machine, and is used: the schedule is re-fitted after every epoch.
    assert 0.75 * 60 * budget_minutes <= elapsed <= 1.2 * 60 * budget_minutes
    history = _history(out)
    printed = capsys.readouterr().out
    assert re.search(r"the schedule runs over (\d+) epochs", printed)  # said after the first epoch, and on large moves
    chosen = json.loads((out / "results.json").read_text())["epochs"]
    assert 1 < chosen < 1000 and len(history) == chosen
    assert history[0]["side"] == (32 if progressive else 64) and history[-1]["side"] == 64
    # The schedule completed: the last steps ran at the floor of the cosine, not at a learning rate cut short.
    assert history[-1]["lr"] == pytest.approx(lr * min_ratio, rel=0.05)
    assert history[0]["lr"] == pytest.approx(lr, rel=0.05)  # end of the one-epoch warmup
    # A resumed run keeps the chosen length: it is in the training state and in the scheduler's state.
    checkpoint = sorted((out / "checkpoints").glob("step_*"))[-1]
    assert json.loads((checkpoint / "trainer_state.json").read_text())["epochs"] == chosen
    scheduler = torch.load(checkpoint / "scheduler.bin", weights_only=True)
    assert scheduler["lr_lambdas"][0]["epochs"] == chosen


def test_a_time_budget_keeps_to_the_epochs_the_config_bounds_it_by(tmp_path, tiny_dataset):
    """A budget far too short still trains train.min_epochs; one far too long stops at train.epochs."""
    from spine_hf.training.loop import train

    short = parse_config(_args(tiny_dataset, tmp_path / "short", "--train.epochs=10", "--train.min_epochs=3",
                               "--train.time_budget_minutes=0.001"))  # fmt: skip
    assert train(short)["epochs"] == 3 and len(_history(tmp_path / "short")) == 3
    long = parse_config(_args(tiny_dataset, tmp_path / "long", "--train.epochs=2", "--train.time_budget_minutes=60"))
    assert train(long)["epochs"] == 2 and len(_history(tmp_path / "long")) == 2
    with pytest.raises(ConfigError, match="min_epochs"):
        parse_config(_args(tiny_dataset, tmp_path / "bad", "--train.epochs=2", "--train.min_epochs=3"))


def test_a_loss_that_stops_being_a_number_stops_the_run_with_what_to_change(tmp_path, tiny_dataset, monkeypatch):
    import spine_hf.training.loop as training

    monkeypatch.setattr(training, "train_epoch", lambda run, epoch, started: (float("nan"), False))
    cfg = parse_config(_args(tiny_dataset, tmp_path / "run", "--train.epochs=2"))
    with pytest.raises(training.DivergedError, match="mixed_precision=no"):
        training.train(cfg)
    assert not (tmp_path / "run" / "best").exists()  # nothing saved from a diverged epoch
