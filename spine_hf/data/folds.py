"""Cross-validation folds of a converted dataset: stratified by grade, grouped by patient.

The pool is the training and validation splits together (the test split is never part of it). Every
row of the pool lands in exactly one of K folds; all rows of a patient land in the same fold, and
each fold gets as close as the patients allow to a K-th of every grade, by the same greedy placement
`split` uses for its splits (`split.assign_parts`), deterministically for a seed.

A row's patient comes from the dataset's `patient` column (what `convert` writes from
``patients.csv`` or its ``--group-regex``), or from a regular expression on its file name
(``--group-regex`` here, the same rule as `split`). A row with neither is its own patient, and the
folds say so. The assignment is written as ``folds.csv`` (split, row, file, patient, grade, fold),
which a later run must reproduce before it continues, so folds never change under a resumed run.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass, field
from pathlib import Path

from spine_hf.data.split import assign_parts, patient_ids
from spine_hf.grades import NUM_GRADES
from spine_hf.outputs import publish_file

FOLDS_FILE = "folds.csv"
_COLUMNS = ("split", "row", "file", "patient", "grade", "fold")


@dataclass(frozen=True)
class PoolRow:
    """One image of the pool: where it is in the dataset, its patient and its grade."""

    split: str
    index: int
    file: str
    patient: str
    grade: int

    @property
    def name(self) -> str:
        """``split/file``: unique over the pool (a file name may repeat in two splits)."""
        return f"{self.split}/{self.file}"


@dataclass(frozen=True)
class FoldRows:
    """What one fold trains on and holds out, as (split, row index) pairs of the dataset."""

    fold: int
    count: int
    train: list[tuple[str, int]]
    held_out: list[tuple[str, int]]

    @property
    def name(self) -> str:
        return f"fold_{self.fold} of {self.count}"


@dataclass
class Folds:
    """The pool's rows and the fold of each."""

    rows: list[PoolRow]
    fold: list[int]
    count: int
    seed: int
    # Where the patient ids came from.
    grouping: str
    # Warnings a user should read (rows without a patient id, grades with fewer patients than folds).
    warnings: list[str] = field(default_factory=list)

    def held_out(self, fold: int) -> list[int]:
        """Positions in `rows` of the rows `fold` holds out, in pool order."""
        return [i for i, f in enumerate(self.fold) if f == fold]

    def fold_rows(self, fold: int) -> FoldRows:
        """The dataset rows `fold` trains on (every other fold) and holds out."""
        pairs = [(row.split, row.index) for row in self.rows]
        train = [pair for pair, f in zip(pairs, self.fold, strict=True) if f != fold]
        held_out = [pair for pair, f in zip(pairs, self.fold, strict=True) if f == fold]
        return FoldRows(fold, self.count, train, held_out)

    def table(self) -> dict[str, list[int]]:
        """Fold name -> images per grade."""
        counts = {f"fold_{k}": [0] * NUM_GRADES for k in range(self.count)}
        for row, fold in zip(self.rows, self.fold, strict=True):
            counts[f"fold_{fold}"][row.grade] += 1
        return counts

    def patients_per_fold(self) -> dict[str, int]:
        found: dict[str, set[str]] = {f"fold_{k}": set() for k in range(self.count)}
        for row, fold in zip(self.rows, self.fold, strict=True):
            found[f"fold_{fold}"].add(row.patient)
        return {name: len(patients) for name, patients in found.items()}

    def to_csv(self) -> str:
        handle = io.StringIO()
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(_COLUMNS)
        for row, fold in zip(self.rows, self.fold, strict=True):
            writer.writerow([row.split, row.index, row.file, row.patient, row.grade, fold])
        return handle.getvalue()

    def check_or_write(self, folder: str | os.PathLike) -> None:
        """Write ``folds.csv`` into `folder`, or check that the one there holds these very folds.

        Raises:
            ValueError: the folder's folds were made from other data, a fold count, seed or grouping.
        """
        path = Path(folder, FOLDS_FILE)
        text = self.to_csv()
        if path.is_file():
            if path.read_text(encoding="utf-8", errors="surrogateescape") != text:
                raise ValueError(
                    f"{path} holds other folds than these ({self.count} folds, seed {self.seed}, grouped by "
                    f"{self.grouping}): the data, --folds, --seed or the grouping changed since that run; use "
                    "another --train.output_dir, or the settings of that run"
                )
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        publish_file(path, text.encode("utf-8", errors="surrogateescape"))


def pool_rows(dataset, splits: tuple[str, ...], group_regex: str | None = None) -> tuple[list[PoolRow], str, int]:
    """Every row of `splits` of a converted dataset with its patient; also where the ids came from and how
    many rows have none (each of those is its own patient, named after the row)."""
    rows, missing = [], 0
    grouping = f"--group-regex '{group_regex}'" if group_regex else "the dataset's patient column"
    for split in splits:
        part = dataset[split]
        files = list(part["file"]) if "file" in part.column_names else [f"row {i}" for i in range(len(part))]
        if group_regex:
            patients = patient_ids(group_regex, files)
        else:
            patients = list(part["patient"]) if "patient" in part.column_names else [""] * len(part)
        labels = [int(label) for label in part["label"]]
        for index, (file, patient, grade) in enumerate(zip(files, patients, labels, strict=True)):
            if not patient:
                missing += 1
                patient = f"(unknown: {split}/{file})"
            rows.append(PoolRow(split, index, file, patient, grade))
    return rows, grouping, missing


def make_folds(dataset, splits: tuple[str, ...], count: int, seed: int, group_regex: str | None = None) -> Folds:
    """K folds over the rows of `splits`, stratified by grade and grouped by patient.

    Raises:
        ValueError: fewer than 2 folds, or fewer patients than folds.
    """
    if count < 2:
        raise ValueError(f"--folds {count}: cross-validation needs at least 2 folds")
    rows, grouping, missing = pool_rows(dataset, splits, group_regex)
    groups: dict[str, list[int]] = {}
    for row in rows:
        groups.setdefault(row.patient, []).append(row.grade)
    if len(groups) < count:
        raise ValueError(f"{len(groups)} patients cannot fill {count} folds; use --folds {max(len(groups), 2)} "
                         "or fewer")  # fmt: skip
    part = assign_parts(groups, [1.0 / count] * count, seed)
    folds = Folds(rows, [part[row.patient] for row in rows], count, seed, grouping)
    empty = sorted(set(range(count)) - set(folds.fold))
    if empty:
        raise ValueError(f"the patients' images could not fill fold(s) {empty} of {count}; use fewer --folds")
    if missing:
        folds.warnings.append(
            f"{missing} of {len(rows)} images have no patient id: each is treated as its own patient, so images "
            "of one patient may be in two folds (give ids with `spine-hf data convert --group-regex`, a "
            "patients.csv, or `cv --group-regex`)"
        )
    patients_per_grade = [len({row.patient for row in rows if row.grade == g}) for g in range(NUM_GRADES)]
    folds.warnings += [
        f"grade {g} has images of only {n} patients: some of the {count} folds hold none of it"
        for g, n in enumerate(patients_per_grade)
        if 0 < n < count
    ]
    return folds
