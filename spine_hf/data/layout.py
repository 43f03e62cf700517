"""Reading a folder tree of graded radiographs: which files are images of which grade in which split.

Two layouts are understood:

* a *split tree*: ``ROOT/{train,val,test}/<grade folder>/image`` (``validation`` and ``valid`` are
  read as ``val``);
* a *pool*: ``ROOT/<grade folder>/image``, what `organize` and `phantoms` write and `split` reads.

A grade folder is ``grade_N``, ``N`` or a grade name (any case). Everything else is reported as a
`Problem` rather than skipped in silence. ``ROOT/patients.csv`` (``file,patient_id``, paths relative
to ROOT) records which patient each image belongs to; `split` and `verify` use it.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

from spine_hf.data.imaging import display_path, is_image_file
from spine_hf.grades import NUM_GRADES, grade_folder, parse_grade

# The splits of a `datasets.DatasetDict`, in order.
SPLITS = ("train", "validation", "test")
# Folder name as users write it -> the split's name in a `datasets.DatasetDict`.
SPLIT_ALIASES = {
    "train": "train",
    "val": "validation",
    "valid": "validation",
    "validation": "validation",
    "test": "test",
}
# DatasetDict split -> the folder name this project writes.
SPLIT_FOLDERS = {"train": "train", "validation": "val", "test": "test"}
PATIENTS_FILE = "patients.csv"
# Files datasets' imagefolder treats as metadata: one of them makes it drop the folder labels.
IMAGEFOLDER_METADATA = frozenset({"metadata.csv", "metadata.jsonl", "metadata.parquet"})
_SYSTEM_FILES = frozenset({"thumbs.db", "desktop.ini"})


@dataclass(frozen=True)
class Problem:
    """Something a user should know about a dataset tree."""

    # "error" (the data cannot be used as it is), "warning" (works, but check) or "info".
    severity: str
    # A stable short identifier, e.g. "unknown_folder", "corrupt", "leakage_exact".
    code: str
    # Path relative to the dataset root ("." for the root itself).
    path: str
    message: str


@dataclass(frozen=True)
class ImageEntry:
    """One image file found under a grade folder."""

    path: Path
    # Posix path relative to the dataset root.
    rel: str
    # "train", "validation", "test", or None in a pool.
    split: str | None
    grade: int
    # How many folders deeper than its grade folder the file sits (0 = directly inside).
    extra_depth: int


@dataclass
class Layout:
    """A scanned dataset tree."""

    root: Path
    # "splits" or "pool".
    kind: str
    images: list[ImageEntry] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    # (split, grade) -> the grade folders found for it, relative to root.
    grade_folders: dict[tuple[str | None, int], list[str]] = field(default_factory=dict)

    def add(self, severity: str, code: str, path: str, message: str) -> None:
        self.problems.append(Problem(severity, code, path, message))

    @property
    def splits(self) -> list[str | None]:
        return sorted({split for split, _ in self.grade_folders}, key=_split_order)


class DatasetLayoutError(ValueError):
    """The tree cannot be used; `problems` lists every reason."""

    def __init__(self, root: Path, problems: Iterable[Problem]):
        self.problems = list(problems)
        lines = "\n".join(f"  {p.path}: {p.message}" for p in self.problems)
        super().__init__(f"{root} cannot be used as it is:\n{lines}")


def scan(root: str | os.PathLike) -> Layout:
    """Find every image of a split tree or a pool and report everything that does not fit.

    Raises:
        DatasetLayoutError: the root is missing or holds neither split nor grade folders.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetLayoutError(root, [Problem("error", "missing", ".", "is not a folder")])
    entries = _list_dir(root)
    folders = [entry for entry in entries if _is_real_dir(entry)]
    if any(entry.name.lower() in SPLIT_ALIASES for entry in folders):
        layout = Layout(root, "splits")
        _scan_splits(layout, entries)
    elif any(_grade_of(entry.name) is not None for entry in folders):
        layout = Layout(root, "pool")
        _scan_grade_level(layout, entries, split=None, rel_prefix="")
    else:
        names = ", ".join(sorted(entry.name for entry in folders)[:8]) or "no folders at all"
        raise DatasetLayoutError(
            root,
            [
                Problem(
                    "error",
                    "no_grade_folders",
                    ".",
                    f"holds neither train/val/test nor grade folders (found: {display_path(names)}); "
                    "run `spine-hf data init` for the expected layout",
                )
            ],
        )
    for (_split, grade), names in layout.grade_folders.items():
        if len(names) > 1:
            layout.add(
                "error",
                "duplicate_grade_folder",
                names[1],
                f"grade {grade} has several folders ({', '.join(names)}); merge them into one",
            )
    return layout


def scan_usable(root: str | os.PathLike, kind: str, wrong_kind: Problem) -> tuple[Layout, list[Problem]]:
    """Scan a tree for a command that takes its labels from the grade folders itself (`split`, `convert`).

    Returns the layout and the problems to show (`tolerated_problems`).

    Raises:
        DatasetLayoutError: the tree is not a `kind` tree (`wrong_kind` says why), or it has a problem no
            command can work around (`STRUCTURAL_ERRORS`, links that lead nowhere).
    """
    layout = scan(root)
    if layout.kind != kind:
        raise DatasetLayoutError(Path(root), [wrong_kind])
    require_usable(layout, STRUCTURAL_ERRORS | {"broken_link"})
    return layout, tolerated_problems(layout)


def require_usable(layout: Layout, blocking: frozenset[str]) -> None:
    """Raise `DatasetLayoutError` if the layout has an error whose code is in `blocking`."""
    bad = [p for p in layout.problems if p.severity == "error" and p.code in blocking]
    if bad:
        raise DatasetLayoutError(layout.root, bad)


def tolerated_problems(layout: Layout) -> list[Problem]:
    """The problems to show when a command reads the tree itself (after `require_usable`).

    Such a command takes labels from the grade folders, so nested folders and stray metadata files
    do not hurt it; they stay visible as warnings because other tools (imagefolder) would drop labels.
    """
    shown = []
    for problem in layout.problems:
        if problem.severity == "info":
            continue
        if problem.severity == "error":
            problem = replace(problem, severity="warning", message=f"{problem.message} (handled here)")
        shown.append(problem)
    return shown


# Problems no command can work around: it would not know which grade or split a file belongs to.
STRUCTURAL_ERRORS = frozenset(
    {"unknown_folder", "duplicate_grade_folder", "unlabelled_image", "grade_outside_split", "missing"}
)


def read_patients(root: str | os.PathLike) -> dict[str, str] | None:
    """``ROOT/patients.csv`` as {relative file: patient id}, or None when there is none."""
    path = Path(root) / PATIENTS_FILE
    if not path.is_file():
        return None
    # surrogateescape: file names that are not UTF-8 round-trip byte for byte.
    with path.open(newline="", encoding="utf-8-sig", errors="surrogateescape") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames or not {"file", "patient_id"} <= set(reader.fieldnames):
            raise ValueError(f"{path}: needs the columns file,patient_id (found {reader.fieldnames})")
        return {row["file"]: row["patient_id"] for row in reader if row.get("patient_id")}


def write_patients(root: str | os.PathLike, patients: dict[str, str], extra: dict[str, dict] | None = None) -> Path:
    """Write ``ROOT/patients.csv`` sorted by file; `extra` (file -> {column: value}) adds columns after
    file,patient_id, which readers of the file ignore."""
    path = Path(root) / PATIENTS_FILE
    columns = sorted({column for values in (extra or {}).values() for column in values}, key=str)
    with path.open("w", newline="", encoding="utf-8", errors="surrogateescape") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "patient_id", *columns])
        for file, patient in sorted(patients.items()):
            more = (extra or {}).get(file, {})
            writer.writerow([file, patient, *(more.get(column, "") for column in columns)])
    return path


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


def unique_name(taken: dict[tuple[object, str], str], folder: object, rel: str) -> str:
    """The file name of `rel` inside an output folder; sub-folder names are folded in only on a clash."""
    name = rel.rsplit("/", 1)[-1]
    if (folder, name) in taken and taken[(folder, name)] != rel:
        name = rel.replace("/", "__")
    taken[(folder, name)] = rel
    return name


def _split_order(split: str | None) -> int:
    return [*SPLITS, None].index(split)


def _grade_of(name: str) -> int | None:
    try:
        return parse_grade(name)
    except ValueError:
        return None


def _list_dir(path: Path) -> list[os.DirEntry]:
    with os.scandir(path) as it:
        return sorted(it, key=lambda entry: entry.name)


def _is_real_dir(entry: os.DirEntry) -> bool:
    return entry.is_dir(follow_symlinks=False)


def _scan_splits(layout: Layout, entries: list[os.DirEntry]) -> None:
    seen: dict[str, str] = {}
    for entry in entries:
        if _is_real_dir(entry):
            split = SPLIT_ALIASES.get(entry.name.lower())
            if split is None:
                if _grade_of(entry.name) is not None:
                    layout.add(
                        "error",
                        "grade_outside_split",
                        entry.name,
                        "is a grade folder beside train/val/test; move it into one of the splits",
                    )
                else:
                    layout.add(
                        "error",
                        "unknown_folder",
                        display_path(entry.name),
                        "is not a split folder (train, val, test); rename or remove it",
                    )
                continue
            if split in seen:
                layout.add(
                    "error",
                    "unknown_folder",
                    entry.name,
                    f"is a second folder for the {split} split (first: {seen[split]}); merge them",
                )
                continue
            seen[split] = entry.name
            _scan_grade_level(layout, _list_dir(Path(entry.path)), split=split, rel_prefix=f"{entry.name}/")
        else:
            _check_loose_file(layout, entry, "")
    for split in SPLITS:
        if split not in seen:
            layout.add("warning", "missing_split", SPLIT_FOLDERS[split], f"there is no {split} split")


def _scan_grade_level(layout: Layout, entries: list[os.DirEntry], split: str | None, rel_prefix: str) -> None:
    found: set[int] = set()
    for entry in entries:
        rel = rel_prefix + entry.name
        if not _is_real_dir(entry):
            _check_loose_file(layout, entry, rel_prefix)
            continue
        grade = _grade_of(entry.name)
        if grade is None:
            layout.add(
                "error",
                "unknown_folder",
                display_path(rel),
                "is not a grade folder (grade_0..grade_4, 0..4 or a grade name); rename or remove it",
            )
            continue
        found.add(grade)
        layout.grade_folders.setdefault((split, grade), []).append(rel)
        before = len(layout.images)
        _scan_grade_folder(layout, Path(entry.path), rel, split, grade)
        if len(layout.images) == before:
            layout.add("warning", "empty_grade_folder", rel, "holds no images")
    where = f"the {split} split" if split else "the pool"
    for grade in sorted(set(range(NUM_GRADES)) - found):
        layout.add("warning", "missing_grade", rel_prefix.rstrip("/") or ".", f"{where} has no grade {grade} folder")


def _scan_grade_folder(layout: Layout, folder: Path, rel_folder: str, split: str | None, grade: int) -> None:
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        dirnames.sort()
        here = Path(dirpath)
        depth = len(here.relative_to(folder).parts)
        rel_here = rel_folder if depth == 0 else f"{rel_folder}/{here.relative_to(folder).as_posix()}"
        for name in dirnames:
            if (here / name).is_symlink():
                layout.add(
                    "warning",
                    "symlinked_folder",
                    display_path(f"{rel_here}/{name}"),
                    "is a link to a folder; it is not followed (replace it by the folder itself)",
                )
        if depth == 1:
            layout.add(
                "error",
                "nested_folder",
                display_path(rel_here),
                "is a folder inside a grade folder: imagefolder gives its files no label (uneven depth); "
                "move the images up into the grade folder",
            )
        for name in sorted(filenames):
            path = here / name
            rel = f"{rel_here}/{name}"
            if _is_ignorable(layout, path, rel):
                continue
            if path.is_symlink() and not path.exists():
                layout.add(
                    "error",
                    "broken_link",
                    display_path(rel),
                    "is a link that leads nowhere (a missing target, or a loop); replace it with the image file "
                    "or remove it",
                )
                continue
            layout.images.append(ImageEntry(path, rel, split, grade, depth))


def _is_ignorable(layout: Layout, path: Path, rel: str) -> bool:
    """Report and skip files that are not images; True when the file is not an image."""
    name = path.name
    lower = name.lower()
    if lower in IMAGEFOLDER_METADATA:
        layout.add(
            "error",
            "stray_metadata",
            display_path(rel),
            "makes datasets' imagefolder ignore the folder labels; move it out of the dataset",
        )
        return True
    if is_image_file(name):
        return False
    if name.startswith(".") or lower in _SYSTEM_FILES:
        layout.add("info", "ignored_system_file", display_path(rel), "system file, ignored")
    else:
        layout.add("warning", "not_an_image", display_path(rel), "has no image extension; ignored")
    return True


def _check_loose_file(layout: Layout, entry: os.DirEntry, rel_prefix: str) -> None:
    """A file outside any grade folder."""
    rel = rel_prefix + entry.name
    if rel == PATIENTS_FILE:
        return
    if entry.is_symlink():
        try:
            target_is_dir = entry.is_dir()
        except OSError:  # a link loop
            target_is_dir = False
        if target_is_dir or not os.path.exists(entry.path):
            layout.add(
                "warning",
                "symlinked_folder" if target_is_dir else "broken_link",
                display_path(rel),
                "is a link to a folder; it is not followed (replace it by the folder itself)"
                if target_is_dir
                else "is a link that leads nowhere (broken or a loop); ignored",
            )
            return
    if _is_ignorable(layout, Path(entry.path), rel):
        return
    layout.add(
        "error",
        "unlabelled_image",
        display_path(rel),
        "is an image outside any grade folder, so it has no grade; move it into one",
    )
