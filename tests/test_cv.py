"""`python -m spine_hf.cv` (what `accelerate launch` and `spine-hf cv` run): its options, exit codes and the
settings it refuses before anything trains."""

from __future__ import annotations

import pytest
from conftest import tiny_run_args

from spine_hf.cv import main


def test_help_names_the_fold_options_then_the_training_configuration(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--help"])
    assert stop.value.code == 0
    printed = capsys.readouterr().out
    assert printed.startswith("spine-hf cv --config_path FILE [--folds 5]")
    assert "--distill" in printed and "--train.epochs" in printed


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--fold", "3"], "--fold 3: the folds are numbered 0 to 1"),
        (["--distill", "2"], "--distill 2.0: the teacher's weight"),
        (["--data.max_samples=8"], "data.max_samples cuts the splits short"),
    ],
)
def test_settings_cross_validation_cannot_use_exit_2_before_training(tmp_path, tiny_dataset, capsys, options,
                                                                     message):  # fmt: skip
    out = tmp_path / "cv"
    assert main([*tiny_run_args(tiny_dataset, out), "--folds", "2", *options]) == 2
    assert message in capsys.readouterr().err
    assert not any(out.glob("fold_*"))
