"""`organize`: a flat pool of images plus a labels CSV -> grade folders ``OUT/grade_N/``.

Nothing here changes or deletes a user's file unless `move=True`, and nothing is overwritten: the
pool is built in a staged folder (`outputs.staged_folder`) and appears as OUT only when complete.
With `move=True` the staged files are hard links (or copies) and the sources are removed only after
OUT is published, so an interruption never strands a file. OUT must be new or empty: there is no
merge and no overwrite, because a pool may hold the only copy of files moved there.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from spine_hf.data.labels_csv import read_label_rows
from spine_hf.data.layout import Problem, display_path, unique_name, write_patients
from spine_hf.data.verify import undecodable_problems
from spine_hf.grades import NUM_GRADES, grade_folder, parse_grade
from spine_hf.outputs import place_file, staged_folder


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
    rows = read_label_rows(labels)
    placed: list[tuple[Path, str]] = []  # (source, path inside OUT)
    with staged_folder(out, replaceable=False) as staging:
        _organize_rows(images, labels, rows, pool, staging, move, placed, report)
    if move:  # OUT is complete: only now do the sources go
        for source, _ in placed:
            source.unlink()
    report.seconds = time.perf_counter() - start
    return report


def _organize_rows(images: Path, labels: Path, rows: list, pool: dict[str, Path], staging: Path, move: bool,
                   placed: list[tuple[Path, str]], report: OrganizeReport) -> None:  # fmt: skip
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
        target = f"{grade_folder(grade)}/{unique_name(placed_names, grade, rel)}"
        place_file(source, staging / target, link=move)
        placed.append((source, target))
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
    report.problems += undecodable_problems(placed)
    if patients:
        write_patients(staging, patients)


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
