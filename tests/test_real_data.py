"""The data layer on real radiographs: the 826 knee images of ../shared/data/knee-kl224/val.

Skipped when the data is not beside the repository. Knee is not spine: this proves the pipeline
handles real, graded radiographs in the `0..4` folder layout, nothing about spine accuracy.
"""

from __future__ import annotations

import re
from collections import defaultdict

import pytest

from spine_hf.cli import main
from spine_hf.data.dataset_folder import load_grade_dataset

pytestmark = pytest.mark.real_data


def test_knee_val_organize_split_verify_convert(tmp_path, knee, capsys):
    val = knee / "val"
    images = sorted(val.glob("[0-4]/*.png"))
    assert len(images) == 826
    labels = tmp_path / "labels.csv"
    lines = ["file,grade,patient_id"]
    patient = re.compile(r"^(\d+)")
    lines += [f"{p.name},{p.parent.name},{patient.match(p.name).group(1)}" for p in images]
    labels.write_text("\n".join(lines) + "\n")

    pool, split, ds = tmp_path / "pool", tmp_path / "split", tmp_path / "ds"
    assert main(["data", "organize", "--images", str(val), "--labels", str(labels), "--out", str(pool)]) == 0
    assert "826 copied" in capsys.readouterr().out
    assert main(["data", "split", str(pool), str(split), "--group-regex", r"^(\d+)", "--seed", "42"]) == 0
    out = capsys.readouterr().out
    assert "826 images in 413 groups" in out
    splits_of = defaultdict(set)
    for path in split.rglob("*.png"):
        splits_of[re.match(r"\d+", path.name).group(0)].add(path.relative_to(split).parts[0])
    assert len(splits_of) == 413 and all(len(s) == 1 for s in splits_of.values())  # no patient in two splits

    assert main(["data", "verify", str(split)]) == 0
    out = capsys.readouterr().out
    assert "OK: 826 readable images, 0 errors" in out and "413 patients" in out
    assert main(["data", "convert", str(split), str(ds)]) == 0
    assert "wrote 826 images" in capsys.readouterr().out
    dataset = load_grade_dataset(ds)
    assert sum(part.num_rows for part in dataset.values()) == 826
    assert 4 in set(dataset["train"]["label"])  # the rare grade reached the training split


def test_knee_layout_with_numeric_folders_verifies_as_is(knee):
    from spine_hf.data.verify import verify_dataset

    report = verify_dataset(knee, group_regex=r"^(\d+)")
    assert report.ok, report.errors[:5]
    assert report.counts["validation"] == [328, 153, 212, 106, 27]
    assert report.counts["train"] == [1561, 739, 1037, 538, 125]
