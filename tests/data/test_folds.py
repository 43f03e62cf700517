"""Cross-validation folds: stratified by grade, grouped by patient, every pooled image in exactly one fold."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spine_hf.data.folds import FOLDS_FILE, make_folds


def _dataset(patients: list[tuple[int, int]], *, with_ids: bool = True, val_every: int = 4):
    """A DatasetDict (train / validation / test) without images: patient n has `views` rows of one grade;
    every `val_every`-th patient is in validation; the test split holds one row that must never be pooled."""
    import datasets

    splits = {"train": defaultdict(list), "validation": defaultdict(list)}
    for number, (grade, views) in enumerate(patients):
        part = splits["validation" if number % val_every == 0 else "train"]
        for view in range(views):
            part["file"].append(f"grade_{grade}/p{number:03d}_{view}.png")
            part["label"].append(grade)
            part["patient"].append(f"p{number:03d}" if with_ids else "")
    splits["test"] = {"file": ["grade_0/t.png"], "label": [0], "patient": ["p999"]}
    return datasets.DatasetDict({name: datasets.Dataset.from_dict(dict(rows)) for name, rows in splits.items()})


SKEWED = [([0, 0, 0, 1, 1, 2, 2, 3, 4][n % 9], 1 + n % 3) for n in range(120)]


def test_folds_keep_patients_together_and_spread_every_grade():
    dataset = _dataset(SKEWED)
    folds = make_folds(dataset, ("train", "validation"), 5, seed=0)
    pooled = len(dataset["train"]) + len(dataset["validation"])
    assert len(folds.rows) == len(folds.fold) == pooled  # every pooled image once, the test split never
    assert {row.split for row in folds.rows} == {"train", "validation"}
    fold_of_patient = defaultdict(set)
    for row, fold in zip(folds.rows, folds.fold, strict=True):
        fold_of_patient[row.patient].add(fold)
    assert all(len(found) == 1 for found in fold_of_patient.values())
    table = np.asarray(list(folds.table().values()))  # folds x grades
    totals = table.sum(axis=0)
    # Patients have up to 3 images: each fold within one patient's images of its share of every grade.
    assert np.all(np.abs(table - totals / 5) <= 3), table
    assert np.abs(table.sum(axis=1) - pooled / 5).max() <= 3
    assert folds.warnings == []
    again = make_folds(dataset, ("train", "validation"), 5, seed=0)
    assert again.fold == folds.fold
    assert make_folds(dataset, ("train", "validation"), 5, seed=1).fold != folds.fold


def test_a_fold_trains_on_every_other_fold_and_holds_out_its_own():
    dataset = _dataset(SKEWED)
    folds = make_folds(dataset, ("train", "validation"), 3, seed=0)
    held_out = [set(folds.fold_rows(k).held_out) for k in range(3)]
    everything = {(row.split, row.index) for row in folds.rows}
    assert set().union(*held_out) == everything and sum(map(len, held_out)) == len(everything)
    for k in range(3):
        rows = folds.fold_rows(k)
        assert set(rows.train) == everything - held_out[k]


def test_patients_come_from_a_regex_when_the_dataset_has_no_ids():
    dataset = _dataset(SKEWED, with_ids=False)
    without = make_folds(dataset, ("train", "validation"), 5, seed=0)
    assert "no patient id" in without.warnings[0]
    grouped = make_folds(dataset, ("train", "validation"), 5, seed=0, group_regex=r"^(p\d+)_")
    assert grouped.warnings == [] and grouped.grouping == "--group-regex '^(p\\d+)_'"
    folds_of = defaultdict(set)
    for row, fold in zip(grouped.rows, grouped.fold, strict=True):
        folds_of[row.file.split("/")[1].split("_")[0]].add(fold)
    assert all(len(found) == 1 for found in folds_of.values())
    with pytest.raises(ValueError, match="does not match"):
        make_folds(dataset, ("train", "validation"), 5, seed=0, group_regex=r"^(q\d+)_")


def test_too_few_patients_and_rare_grades_are_said():
    with pytest.raises(ValueError, match="3 patients cannot fill 5 folds"):
        make_folds(_dataset([(0, 2), (1, 1), (2, 1)], val_every=2), ("train", "validation"), 5, seed=0)
    rare = [(n % 4, 1) for n in range(40)] + [(4, 1), (4, 2)]
    folds = make_folds(_dataset(rare), ("train", "validation"), 5, seed=0)
    assert any("grade 4 has images of only 2 patients" in warning for warning in folds.warnings)


def test_the_folds_file_must_match_on_a_later_run(tmp_path):
    dataset = _dataset(SKEWED)
    folds = make_folds(dataset, ("train", "validation"), 5, seed=0)
    folds.check_or_write(tmp_path)
    text = (tmp_path / FOLDS_FILE).read_text()
    assert text.splitlines()[0] == "split,row,file,patient,grade,fold" and len(text.splitlines()) == len(folds.rows) + 1
    folds.check_or_write(tmp_path)  # the same folds: accepted
    with pytest.raises(ValueError, match="other folds"):
        make_folds(dataset, ("train", "validation"), 5, seed=3).check_or_write(tmp_path)


@settings(max_examples=30, deadline=None)
@given(
    patients=st.lists(st.tuples(st.integers(0, 4), st.integers(1, 4)), min_size=6, max_size=60),
    count=st.integers(2, 6),
    seed=st.integers(0, 10_000),
)
def test_every_image_is_in_exactly_one_fold_and_patients_stay_together(patients, count, seed):
    dataset = _dataset(patients, val_every=3)
    if len(patients) < count:
        with pytest.raises(ValueError, match="cannot fill"):
            make_folds(dataset, ("train", "validation"), count, seed)
        return
    folds = make_folds(dataset, ("train", "validation"), count, seed)
    pooled = [(split, i) for split in ("train", "validation") for i in range(len(dataset[split]))]
    assert sorted((row.split, row.index) for row in folds.rows) == sorted(pooled)
    assert set(folds.fold) <= set(range(count))
    assert sum(len(folds.held_out(k)) for k in range(count)) == len(folds.rows)
    by_patient = defaultdict(set)
    for row, fold in zip(folds.rows, folds.fold, strict=True):
        by_patient[row.patient].add(fold)
    assert all(len(found) == 1 for found in by_patient.values())
