"""The command line as a new user runs it: phantoms -> split -> verify -> convert."""

from __future__ import annotations

import subprocess
import sys

from spine_hf.cli import main
from spine_hf.data.dataset_folder import load_grade_dataset
from spine_hf.grades import GRADE_NAMES


def test_phantoms_split_verify_convert(tmp_path, capsys):
    pool, split, ds = tmp_path / "ph", tmp_path / "split", tmp_path / "ds"
    assert main(["data", "phantoms", str(pool), "--per-grade", "6", "--seed", "1", "--size", "64"]) == 0
    assert main(["data", "split", str(pool), str(split), "--ratios", "0.6,0.2,0.2", "--seed", "42"]) == 0
    out = capsys.readouterr().out
    assert "patients" in out and f"grouped by {pool / 'patients.csv'}" in out
    assert main(["data", "verify", str(split), "--json", str(tmp_path / "v.json")]) == 0
    assert "OK: 30 readable images, 0 errors" in capsys.readouterr().out
    assert main(["data", "convert", str(split), str(ds)]) == 0
    assert "wrote 30 images" in capsys.readouterr().out
    dataset = load_grade_dataset(ds)
    assert sorted(dataset) == ["test", "train", "validation"]
    assert dataset["test"].features["label"].names == list(GRADE_NAMES)


def test_init_and_errors_without_traceback(tmp_path, capsys):
    assert main(["data", "init", str(tmp_path / "new")]) == 0
    assert "created 15 folders" in capsys.readouterr().out
    assert main(["data", "split", str(tmp_path / "new"), str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error:") and "already has train/val/test" in err
    assert main(["data", "convert", str(tmp_path / "missing"), str(tmp_path / "o")]) == 1
    assert "is not a folder" in capsys.readouterr().err


def test_console_script_help_runs():
    result = subprocess.run([sys.executable, "-m", "spine_hf.cli", "data", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    for command in ("init", "organize", "split", "verify", "convert", "phantoms"):
        assert command in result.stdout
