"""verify: each kind of mess is named, errors fail the exit status, warnings do not."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from factories import write_png
from PIL import Image

from spine_hf.cli import main
from spine_hf.data.verify import verify_dataset


def _clean_tree(root: Path) -> Path:
    seed = 0
    for split, per_grade in (("train", 3), ("val", 1), ("test", 1)):
        for grade in range(5):
            for i in range(per_grade):
                write_png(root / split / f"grade_{grade}" / f"{split}_{grade}_{i}.png", seed=seed)
                seed += 1
    return root


def _codes(report) -> dict[str, set[str]]:
    codes: dict[str, set[str]] = {}
    for problem in report.problems:
        codes.setdefault(problem.code, set()).add(problem.path)
    return codes


def test_a_clean_tree_passes(tmp_path):
    report = verify_dataset(_clean_tree(tmp_path / "ds"))
    assert report.ok, report.problems
    assert report.counts == {"train": [3] * 5, "validation": [1] * 5, "test": [1] * 5}
    assert report.images == 25


def test_the_planted_mess_is_reported_item_by_item_and_fails(tmp_path, capsys):
    root = _clean_tree(tmp_path / "ds")
    good = (root / "train" / "grade_1" / "train_1_0.png").read_bytes()
    (root / "train" / "grade_1" / "corrupt.png").write_bytes(good[: len(good) // 2])
    (root / "train" / "grade_2" / "empty.png").write_bytes(b"")
    (root / "val" / "grade_0" / "notes.png").write_text("this is a text file, not an image\n")
    shutil.copy(root / "train" / "grade_4" / "train_4_0.png", root / "test" / "grade_4" / "copy.png")
    write_png(root / "train" / "grade_3" / "extra" / "nested.png", seed=500)
    (root / "train" / "metadata.csv").write_text("file_name,label\n")
    write_png(root / "val" / "misc" / "x.png", seed=501)
    write_png(root / "test" / "loose.png", seed=502)

    report = verify_dataset(root)
    codes = _codes(report)
    assert codes["corrupt"] == {"train/grade_1/corrupt.png"}
    assert codes["empty"] == {"train/grade_2/empty.png"}
    assert codes["not_image"] == {"val/grade_0/notes.png"}
    assert codes["leakage_exact"] & {"train/grade_4/train_4_0.png", "test/grade_4/copy.png"}
    assert codes["nested_folder"] == {"train/grade_3/extra"}
    assert codes["stray_metadata"] == {"train/metadata.csv"}
    assert codes["unknown_folder"] == {"val/misc"}
    assert codes["unlabelled_image"] == {"test/loose.png"}
    assert not report.ok
    assert {p.severity for p in report.problems if p.code in codes} >= {"error"}

    assert main(["data", "verify", str(root), "--json", str(tmp_path / "report.json")]) == 1
    printed = capsys.readouterr().out
    for name in ("corrupt.png", "empty.png", "notes.png", "copy.png", "extra", "metadata.csv", "misc", "loose.png"):
        assert name in printed
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["ok"] is False
    assert {p["code"] for p in saved["problems"]} >= {"corrupt", "empty", "not_image", "leakage_exact"}


def test_warnings_do_not_fail(tmp_path):
    root = _clean_tree(tmp_path / "ds")
    write_png(root / "train" / "grade_0" / "deep.png", seed=900, sixteen_bit=True)
    Image.new("L", (40, 40), 128).save(root / "train" / "grade_1" / "blank.png")
    Image.new("L", (40, 40), 3).save(root / "train" / "grade_1" / "dark.png")
    (root / "train" / "grade_2" / "readme.txt").write_text("notes")
    (root / "train" / "grade_2" / ".DS_Store").write_bytes(b"\0")
    report = verify_dataset(root)
    codes = _codes(report)
    assert report.ok, report.errors
    assert {"mixed_formats", "near_blank", "not_an_image"} <= set(codes)
    assert "train/grade_1/blank.png" in codes["near_blank"]


def test_near_duplicates_across_splits_are_flagged(tmp_path):
    root = _clean_tree(tmp_path / "ds")
    source = Image.open(write_png(root / "train" / "grade_2" / "big.png", seed=77, size=160))
    buffer = io.BytesIO()
    source.resize((128, 128)).save(buffer, format="JPEG", quality=80)
    (root / "val" / "grade_2" / "resized.jpg").write_bytes(buffer.getvalue())
    codes = _codes(verify_dataset(root))
    assert "near_duplicate_across_splits" in codes
    assert "leakage_exact" not in codes


def test_the_same_image_with_two_grades_is_an_error(tmp_path):
    root = _clean_tree(tmp_path / "ds")
    shutil.copy(root / "train" / "grade_0" / "train_0_0.png", root / "train" / "grade_3" / "again.png")
    assert "conflicting_labels" in _codes(verify_dataset(root))


def test_patient_leakage_from_regex_and_from_patients_csv(tmp_path):
    root = _clean_tree(tmp_path / "ds")
    # `train_0_0.png` and `test_0_0.png` both belong to patient "0_0" under this regex.
    report = verify_dataset(root, group_regex=r"_(\d+_\d+)\.png$")
    assert "patient_leakage" in _codes(report)
    assert report.patients.startswith("--group-regex")
    (root / "patients.csv").write_text("file,patient_id\ntrain/grade_0/train_0_0.png,A\nval/grade_1/val_1_0.png,A\n")
    codes = _codes(verify_dataset(root))
    assert codes["patient_leakage"] == {"patient A"}
    assert "no_patient_id" in codes  # the other images have no id: said, not hidden


@pytest.mark.parametrize("names", [["0", "1", "2", "3", "4"], ["Healthy", "Doubtful", "Minimal", "Moderate", "Severe"]])
def test_folder_naming_styles_are_accepted(tmp_path, names):
    for grade, name in enumerate(names):
        write_png(tmp_path / "ds" / "train" / name / "a.png", seed=grade)
    report = verify_dataset(tmp_path / "ds")
    assert report.ok and report.counts["train"] == [1] * 5


def test_two_folders_for_one_grade_are_an_error(tmp_path):
    write_png(tmp_path / "ds" / "train" / "0" / "a.png", seed=1)
    write_png(tmp_path / "ds" / "train" / "grade_0" / "b.png", seed=2)
    assert "duplicate_grade_folder" in _codes(verify_dataset(tmp_path / "ds"))


def test_a_folder_without_grade_folders_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "photos").mkdir()
    write_png(tmp_path / "photos" / "holiday" / "a.png", seed=1)
    assert main(["data", "verify", str(tmp_path / "photos")]) == 1
    assert "neither train/val/test nor grade folders" in capsys.readouterr().err


def test_phantom_split_verifies_clean(phantom_split):
    report = verify_dataset(phantom_split)
    assert report.ok, report.errors
    assert report.patients and "patients.csv" in report.patients
    assert sum(map(sum, report.counts.values())) == 30
    assert np.all(np.array(report.counts["train"]) > 0)


def test_a_flood_of_near_duplicates_is_summarised(tmp_path, monkeypatch):
    import spine_hf.data.verify as verify

    root = _clean_tree(tmp_path / "ds")
    source = Image.open(write_png(root / "train" / "grade_2" / "big.png", seed=78, size=160))
    for i, split in enumerate(["train", "val", "test"]):
        source.resize((150 - i, 150 - i)).save(root / split / "grade_2" / f"copy{i}.png")
    monkeypatch.setattr(verify, "MAX_NEAR_PAIRS", 2)
    near = [p for p in verify_dataset(root).problems if p.code.startswith("near_duplicate")]
    assert len(near) == 3 and any("6 near-duplicate pairs" in p.message for p in near)
    assert sum(p.code == "near_duplicate_across_splits" for p in near) == 2  # cross-split pairs come first
