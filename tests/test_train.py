"""`python -m spine_hf.train` (what `accelerate launch` and `spine-hf train` run): exit codes, what it prints,
an earlier run kept unless asked."""

from __future__ import annotations

import json

import pytest
from conftest import tiny_run_args as _args

from spine_hf.train import main


def test_an_earlier_run_is_continued_or_replaced_only_when_asked(tmp_path, tiny_dataset, capsys):
    out = tmp_path / "run"
    assert main(_args(tiny_dataset, out, "--train.epochs=1")) == 0
    best = (out / "best" / "model.safetensors").read_bytes()
    assert main(_args(tiny_dataset, out, "--train.epochs=1")) == 2
    assert "--train.resume=true" in capsys.readouterr().err
    assert (out / "best" / "model.safetensors").read_bytes() == best  # untouched
    assert main(_args(tiny_dataset, out, "--train.epochs=1", "--train.overwrite=true", "--train.seed=7")) == 0
    history = json.loads((out / "metrics.json").read_text())
    assert [r["epoch"] for r in history] == [1]  # a new history, not appended to the old one


def test_it_prints_the_best_metrics_and_the_model_folder(tmp_path, tiny_dataset, capsys):
    out = tmp_path / "run"
    assert main(_args(tiny_dataset, out, "--train.epochs=1")) == 0
    printed = capsys.readouterr().out
    best = json.loads((out / "results.json").read_text())
    assert f"validation: QWK {best['validation']['qwk']:.4f}" in printed
    assert printed.rstrip().endswith(f"model folder: {out / 'best'}")


def test_a_bad_setting_exits_2_and_a_missing_dataset_exits_1(tmp_path, tiny_dataset, capsys):
    with pytest.raises(SystemExit) as stop:  # argparse's own exit for an unknown key, with the keys it knows
        main(_args(tiny_dataset, tmp_path / "a", "--train.no_such_key=1"))
    assert stop.value.code == 2 and "unrecognized arguments: --train.no_such_key=1" in capsys.readouterr().err
    assert main(_args(tiny_dataset, tmp_path / "a", "--train.min_epochs=0")) == 2
    assert "train.min_epochs must be in [1, train.epochs]" in capsys.readouterr().err
    assert main(_args(tmp_path / "missing", tmp_path / "b", "--train.epochs=1")) == 1
    assert str(tmp_path / "missing") in capsys.readouterr().err
    assert not (tmp_path / "b" / "best").exists()
