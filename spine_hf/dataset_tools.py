"""Preparing grade folders: `init` the layout, `organize` a flat pool from a CSV, `split` by patient.

Nothing here changes or deletes a user's file unless `move=True`, and nothing is overwritten:
`organize` and `split` write into a hidden ``.OUT.partial`` folder beside OUT and rename it to OUT
only when it is complete, so an interrupted run leaves no OUT that looks finished. With
`move=True` the sources are removed only after that rename (until then the output holds hard
links or copies), so an interruption never strands a file. OUT must be new or empty: there is no
merge and no overwrite, because a pool may hold the only copy of files moved there.
"""

from __future__ import annotations

import csv
import logging
import os
import re
import shutil
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from spine_hf.grades import NUM_GRADES, grade_folder, parse_grade
from spine_hf.layout import (
    PATIENTS_FILE,
    SPLIT_FOLDERS,
    STRUCTURAL_ERRORS,
    DatasetLayoutError,
    ImageEntry,
    Problem,
    display_path,
    read_patients,
    require_usable,
    scan,
    tolerated_problems,
    write_patients,
)
from spine_hf.verify import undecodable_problems

logger = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
_FILE_COLUMNS = ("file", "filename", "file_name", "path", "image", "image_path")
_GRADE_COLUMNS = ("grade", "label", "kl_grade", "kl", "severity")
_PATIENT_COLUMNS = ("patient_id", "patient", "patientid", "subject_id", "subject")


def init_dataset(root: str | os.PathLike) -> list[Path]:
    """Create ``ROOT/{train,val,test}/grade_0..grade_4``; returns the folders it created."""
    created = []
    for split in SPLITS:
        for grade in range(NUM_GRADES):
            folder = Path(root) / SPLIT_FOLDERS[split] / grade_folder(grade)
            if not folder.is_dir():
                folder.mkdir(parents=True)
                created.append(folder)
    return created


# --------------------------------------------------------------------------------------- organize


@dataclass
class OrganizeReport:
    """What `organize` did, row by row."""

    out: Path
    # grade -> files placed (copied or moved) by this run
    placed: list[int] = field(default_factory=lambda: [0] * NUM_GRADES)
    # Problems; `path` is "labels.csv:LINE" for a row of the CSV.
    problems: list[Problem] = field(default_factory=list)
    rows: int = 0
    seconds: float = 0.0

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]


def organize(
    images: str | os.PathLike,
    labels: str | os.PathLike,
    out: str | os.PathLike,
    *,
    move: bool = False,
) -> OrganizeReport:
    """Sort a flat pool of images into ``OUT/grade_N/`` from a CSV of ``file,grade[,patient_id]``.

    The CSV may have a header (``file``/``filename``/``path``, ``grade``/``label``,
    ``patient_id``/``patient``) or be three bare columns in that order. Grades are 0-4, ``grade_N``
    or grade names. File paths are relative to `images`; a bare file name is also found in a
    sub-folder when it is unique there. Every bad row is reported with its line number, the good
    rows are still placed, and images in `images` that the CSV does not mention are listed.
    Patient ids, when given, go to ``OUT/patients.csv`` for `split`. Files that cannot be decoded
    are placed like the others (nothing is dropped) and reported as warnings.
    """
    start = time.perf_counter()
    images, labels, out = Path(images), Path(labels), Path(out)
    report = OrganizeReport(out)
    if not images.is_dir():
        raise FileNotFoundError(f"{images}: the image folder does not exist")
    pool = _index_files(images)
    rows = _read_label_rows(labels)
    staged = _StagedOutput(out, move)
    try:
        _organize_rows(images, labels, rows, pool, staged, report)
        staged.publish()
    finally:
        staged.discard()
    report.seconds = time.perf_counter() - start
    return report


def _organize_rows(
    images: Path, labels: Path, rows: list, pool: dict[str, Path], staged: _StagedOutput, report: OrganizeReport
) -> None:
    report.rows = len(rows)
    tag = labels.name
    chosen: dict[str, tuple[int, int]] = {}  # relative source -> (line, grade)
    patients: dict[str, str] = {}
    placed_names: dict[tuple[object, str], str] = {}
    for line, name, grade_text, patient in rows:
        where = f"{tag}:{line}"
        try:
            grade = parse_grade(grade_text)
        except ValueError as err:
            report.problems.append(Problem("error", "unknown_grade", where, f"{name}: {err}"))
            continue
        source, trouble = _resolve(images, pool, name)
        if source is None:
            report.problems.append(Problem("error", "missing_file", where, f"{display_path(name)}: {trouble}"))
            continue
        rel = source.relative_to(images).as_posix()
        if not source.exists():  # a link to nothing, or to itself
            chosen.setdefault(rel, (line, grade))
            report.problems.append(
                Problem(
                    "error",
                    "broken_link",
                    where,
                    f"{display_path(name)} is a link that leads nowhere (broken, or a loop); "
                    "replace it with the image file",
                )
            )
            continue
        if rel in chosen:
            first_line, first_grade = chosen[rel]
            if first_grade == grade:
                report.problems.append(
                    Problem(
                        "warning",
                        "duplicate_row",
                        where,
                        f"{display_path(name)} is listed again (first on line {first_line})",
                    )
                )
            else:
                report.problems.append(
                    Problem(
                        "error",
                        "conflicting_rows",
                        where,
                        f"{display_path(name)} has grade {grade} here but grade {first_grade} on line {first_line}; "
                        "the first row was used",
                    )
                )
            continue
        chosen[rel] = (line, grade)
        target = f"{grade_folder(grade)}/{_unique_name(placed_names, grade, rel)}"
        staged.place(source, target)
        report.placed[grade] += 1
        if patient:
            patients[target] = patient
        else:
            report.problems.append(Problem("info", "no_patient_id", where, f"{display_path(name)} has no patient id"))
    unlisted = sorted(set(pool) - set(chosen))
    for rel in unlisted:
        report.problems.append(
            Problem("warning", "not_in_csv", display_path(rel), "is in the image folder but not in the CSV; not copied")
        )
    report.problems += undecodable_problems(staged.placed)
    if patients:
        write_patients(staged.dir, patients)


def _read_label_rows(labels: Path, need_grade: bool = True) -> list[tuple[int, str, str, str]]:
    """(line, file, grade, patient id) for every data row of a labels CSV.

    With a header, columns are found by name (the grade column only when `need_grade`); without
    one, they are file, grade, patient id in that order.
    """
    data = labels.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        # A CSV in a legacy encoding names files whose names on disk are usually in the same one:
        # keeping the bytes (as Python keeps file names) matches them exactly.
        logger.warning("%s is not UTF-8; its file names are matched to the files byte for byte", labels)
        text = data.decode("utf-8", errors="surrogateescape")
    try:
        dialect = csv.Sniffer().sniff(text[:4096], delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    table = [(n, row) for n, row in enumerate(csv.reader(text.splitlines(), dialect), 1) if any(row)]
    if not table:
        raise ValueError(f"{labels}: the CSV has no rows")
    header = [cell.strip().lower() for cell in table[0][1]]
    if any(name in header for name in _FILE_COLUMNS):
        file_column = _column(header, _FILE_COLUMNS)
        grade_column = _column(header, _GRADE_COLUMNS)
        patient_column = _column(header, _PATIENT_COLUMNS)
        if grade_column is None and need_grade:
            raise ValueError(f"{labels}: no grade column ({', '.join(_GRADE_COLUMNS)}) in the header {header}")
        table = table[1:]
    else:
        file_column, grade_column, patient_column = 0, 1, 2
    rows = []
    for line, row in table:
        cells = [cell.strip() for cell in row]

        def cell(index: int | None, cells=cells) -> str:
            return cells[index] if index is not None and index < len(cells) else ""

        rows.append((line, cell(file_column), cell(grade_column), cell(patient_column)))
    return rows


def _column(header: list[str], names: tuple[str, ...]) -> int | None:
    return next((header.index(name) for name in names if name in header), None)


def _index_files(root: Path) -> dict[str, Path]:
    """Every regular file under root by posix relative path."""
    files = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        for name in filenames:
            path = Path(dirpath) / name
            if path.is_file() or path.is_symlink():  # links that lead nowhere are reported by name later
                files[path.relative_to(root).as_posix()] = path
    return files


def _resolve(images: Path, pool: dict[str, Path], name: str) -> tuple[Path | None, str]:
    if not name:
        return None, "the file column is empty"
    rel = Path(name.replace("\\", "/"))
    if rel.is_absolute() or ".." in rel.parts:
        return None, f"must be a path inside {images} (no absolute paths or '..')"
    if rel.as_posix() in pool:
        return pool[rel.as_posix()], ""
    legacy = _legacy_name(rel.as_posix())
    if legacy in pool:  # a UTF-8 CSV naming a file whose name on disk is Latin-1/cp1252
        return pool[legacy], ""
    names = {rel.name, legacy.rsplit("/", 1)[-1]}
    matches = [path for key, path in pool.items() if key.rsplit("/", 1)[-1] in names]
    if len(matches) == 1:
        return matches[0], ""
    if len(matches) > 1:
        return None, f"the name matches {len(matches)} files in sub-folders; give its relative path"
    return None, f"no such file in {images}"


def _legacy_name(name: str) -> str:
    """How Python sees `name` when it was saved to disk in cp1252 (the common non-UTF-8 encoding)."""
    try:
        return os.fsdecode(name.encode("cp1252"))
    except UnicodeEncodeError:
        return name


def _unique_name(taken: dict[tuple[object, str], str], folder: object, rel: str) -> str:
    """The file name inside an output folder; sub-folder names are folded in only on a clash."""
    name = rel.rsplit("/", 1)[-1]
    if (folder, name) in taken and taken[(folder, name)] != rel:
        name = rel.replace("/", "__")
    taken[(folder, name)] = rel
    return name


class _StagedOutput:
    """Files gathered in ``.OUT.partial`` beside OUT, renamed to OUT only when complete."""

    def __init__(self, out: Path, move: bool):
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise ValueError(
                f"{out} already exists and is not empty; choose a new output folder (nothing is ever merged "
                "into or overwritten in an existing one)"
            )
        self.out, self.move = out, move
        self.dir = out.parent / f".{out.name}.partial"
        # Left by an interrupted run: it only ever holds copies and links, so it can go.
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(parents=True)
        # (source, path inside OUT) of every file placed
        self.placed: list[tuple[Path, str]] = []

    def place(self, source: Path, rel: str) -> None:
        """Copy `source` to OUT/rel (hard-link it when moving: the source goes once OUT is published)."""
        destination = self.dir / rel
        if destination.exists():
            raise RuntimeError(f"{display_path(rel)} would be written twice; nothing was overwritten")
        destination.parent.mkdir(parents=True, exist_ok=True)
        try:
            if not self.move:
                raise OSError  # a copy never shares its bytes with the user's file
            os.link(source, destination)
        except OSError:
            shutil.copy2(source, destination)
        self.placed.append((source, rel))

    def publish(self) -> None:
        if self.out.exists():
            self.out.rmdir()  # checked empty above
        os.replace(self.dir, self.out)
        if self.move:
            for source, _ in self.placed:
                source.unlink()

    def discard(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


# ------------------------------------------------------------------------------------------ split


@dataclass
class SplitReport:
    """What `split_dataset` produced."""

    out: Path
    # split -> grade -> images
    counts: dict[str, list[int]]
    # split -> number of patients (groups)
    groups: dict[str, int]
    # Where the patient ids came from.
    grouping: str
    problems: list[Problem] = field(default_factory=list)
    seconds: float = 0.0


def parse_ratios(text: str) -> tuple[float, float, float]:
    """``"0.7,0.15,0.15"`` -> train, val, test fractions that sum to 1."""
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError as err:
        raise ValueError(f"--ratios {text!r}: expected three numbers such as 0.7,0.15,0.15") from err
    if len(values) != 3 or min(values) < 0 or abs(sum(values) - 1) > 1e-6:
        raise ValueError(f"--ratios {text!r}: give three non-negative fractions for train,val,test summing to 1")
    return values  # type: ignore[return-value]


def split_dataset(
    source: str | os.PathLike,
    out: str | os.PathLike,
    *,
    ratios: tuple[float, float, float] = (0.7, 0.15, 0.15),
    seed: int = 42,
    group_regex: str | None = None,
    groups_csv: str | os.PathLike | None = None,
    move: bool = False,
) -> SplitReport:
    """Split a pool of grade folders into ``OUT/{train,val,test}/grade_N``, stratified and grouped.

    All images of a patient land in the same split; within that constraint each split gets as
    close as possible to its share of every grade. The result depends only on the files, the
    groups, the ratios and the seed.

    Args:
        source: a pool (``SOURCE/<grade folder>/...``).
        out: a new or empty folder.
        ratios: train, val, test fractions.
        seed: shuffles the order in which patients are placed.
        group_regex: regular expression on the file name; its first group (or whole match) is
            the patient id.
        groups_csv: a CSV with ``file`` (relative to `source`, or a bare name) and ``patient_id``.
            Without either, ``SOURCE/patients.csv`` is used when present; otherwise every image is
            its own group, which is reported.
        move: move instead of copy.

    Raises:
        DatasetLayoutError: the source is not a usable pool.
        ValueError: bad ratios, an existing non-empty output, files the regex does not match.
    """
    start = time.perf_counter()
    source, out = Path(source), Path(out)
    parse_ratios(",".join(str(r) for r in ratios))
    layout = scan(source)
    if layout.kind != "pool":
        raise DatasetLayoutError(
            source,
            [
                Problem(
                    "error",
                    "already_split",
                    ".",
                    "already has train/val/test folders; point split at a pool of grade folders",
                )
            ],
        )
    require_usable(layout, STRUCTURAL_ERRORS | {"broken_link"})
    problems = tolerated_problems(layout)
    staged = _StagedOutput(out, move)
    try:
        report = _split_into(layout, source, staged, ratios, seed, group_regex, groups_csv, problems)
        staged.publish()
    finally:
        staged.discard()
    report.seconds = time.perf_counter() - start
    return report


def _split_into(layout, source, staged, ratios, seed, group_regex, groups_csv, problems) -> SplitReport:
    """Assign patients to splits and place their images in the staging folder."""
    groups, grouping = _groups_for(layout.images, source, group_regex, groups_csv)
    if grouping == "none":
        problems.append(
            Problem(
                "warning",
                "no_grouping",
                ".",
                "no patient ids (--group-regex, --groups or patients.csv): images of one patient may "
                "end up in two splits",
            )
        )
    assignment = assign_groups({group: [e.grade for e in entries] for group, entries in groups.items()}, ratios, seed)
    counts = {split: [0] * NUM_GRADES for split in SPLITS}
    patients: dict[str, str] = {}
    taken: dict[tuple[object, str], str] = {}
    for group, entries in groups.items():
        split = assignment[group]
        for entry in entries:
            name = _unique_name(taken, (split, entry.grade), entry.rel)
            rel_out = f"{SPLIT_FOLDERS[split]}/{grade_folder(entry.grade)}/{name}"
            staged.place(entry.path, rel_out)
            counts[split][entry.grade] += 1
            if grouping != "none":
                patients[rel_out] = group
    if patients:
        write_patients(staged.dir, patients)
    problems += undecodable_problems(staged.placed)
    for grade in range(NUM_GRADES):
        for split, ratio in zip(SPLITS, ratios, strict=True):
            if ratio > 0 and counts[split][grade] == 0 and sum(c[grade] for c in counts.values()):
                problems.append(
                    Problem(
                        "warning",
                        "grade_missing_in_split",
                        SPLIT_FOLDERS[split],
                        f"gets no image of grade {grade} (too few patients with that grade)",
                    )
                )
    group_counts = Counter(assignment.values())
    return SplitReport(
        out=staged.out,
        counts=counts,
        groups={split: group_counts.get(split, 0) for split in SPLITS},
        grouping=grouping,
        problems=problems,
    )


def _groups_for(
    images: list[ImageEntry], source: Path, group_regex: str | None, groups_csv: str | os.PathLike | None
) -> tuple[dict[str, list[ImageEntry]], str]:
    groups: dict[str, list[ImageEntry]] = defaultdict(list)
    if group_regex:
        pattern = re.compile(group_regex)
        unmatched = []
        for entry in images:
            match = pattern.search(entry.path.name)
            if match is None:
                unmatched.append(entry.rel)
            else:
                groups[match.group(1) if match.groups() else match.group(0)].append(entry)
        if unmatched:
            examples = ", ".join(display_path(rel) for rel in unmatched[:5])
            raise ValueError(
                f"--group-regex {group_regex!r} does not match {len(unmatched)} file name(s), e.g. {examples}; "
                "fix the expression so every file yields a patient id"
            )
        return dict(groups), f"--group-regex '{group_regex}'"
    if groups_csv is not None:
        known = _read_groups_csv(Path(groups_csv))
        origin = str(groups_csv)
    else:
        known = read_patients(source)
        origin = str(source / PATIENTS_FILE)
    if known is None:
        return {f"file:{entry.rel}": [entry] for entry in images}, "none"
    by_name = Counter(rel.rsplit("/", 1)[-1] for rel in known)
    missing = []
    for entry in images:
        patient = known.get(entry.rel)
        if patient is None and by_name[entry.path.name] == 1:
            patient = next(v for k, v in known.items() if k.rsplit("/", 1)[-1] == entry.path.name)
        if patient is None:
            missing.append(entry.rel)
        else:
            groups[patient].append(entry)
    if missing:
        examples = ", ".join(display_path(rel) for rel in missing[:5])
        raise ValueError(f"{origin} has no patient id for {len(missing)} image(s), e.g. {examples}; add them")
    return dict(groups), origin


def _read_groups_csv(path: Path) -> dict[str, str]:
    rows = _read_label_rows(path, need_grade=False)
    if not any(patient for *_, patient in rows):
        raise ValueError(f"{path}: no patient ids found; it needs file and patient_id columns")
    return {name: patient for _, name, _, patient in rows if patient}


def assign_groups(groups: dict[str, list[int]], ratios: tuple[float, float, float], seed: int) -> dict[str, str]:
    """Place each group (patient -> grades of its images) in a split, stratified by grade.

    Greedy: groups are shuffled with the seed, then placed largest first, each into the split
    whose per-grade and total counts move closest to their targets (squared error, each grade
    weighted by its rarity so that rare grades are spread as well as common ones).
    """
    rng = np.random.default_rng(seed)
    names = sorted(groups)
    names = [names[i] for i in rng.permutation(len(names))]
    names.sort(key=lambda name: -len(groups[name]))  # stable: the shuffle breaks ties
    totals = np.zeros(NUM_GRADES)
    for grades in groups.values():
        np.add.at(totals, grades, 1)
    ratio = np.asarray(ratios, dtype=np.float64)
    target = ratio[:, None] * totals[None, :]  # split x grade
    weight = 1.0 / np.maximum(totals, 1.0)
    current = np.zeros_like(target)
    assignment = {}
    n_total = max(totals.sum(), 1.0)
    for name in names:
        add = np.bincount(groups[name], minlength=NUM_GRADES).astype(np.float64)
        best, best_cost = None, None
        for s in range(len(SPLITS)):
            if ratio[s] == 0:
                continue
            grade_cost = (((current[s] + add - target[s]) ** 2 - (current[s] - target[s]) ** 2) * weight).sum()
            size_now, size_target = current[s].sum(), ratio[s] * n_total
            size_cost = ((size_now + add.sum() - size_target) ** 2 - (size_now - size_target) ** 2) / n_total
            cost = grade_cost + size_cost
            if best_cost is None or cost < best_cost - 1e-12:
                best, best_cost = s, cost
        current[best] += add
        assignment[name] = SPLITS[best]
    return assignment
