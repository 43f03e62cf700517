"""`convert`: a split tree of grade folders -> a Hugging Face `datasets.DatasetDict` folder.

Every image goes through the project's decoder on the way in, so the dataset holds canonical
8-bit grayscale images: 16-bit PNG and DICOM are converted once here, never again at training
time. Files that already are plain 8-bit grayscale PNG/JPEG without metadata keep their bytes.
The rows are written straight to Arrow (`dataset_folder.write_dataset_dict`) with the label given
per row, so no label is inferred from folder names, sorted as a string or dropped for uneven depths
(the traps of datasets' ``imagefolder``), and every scanned image is counted into the dataset.

DICOM files leave nothing of their header behind: the pixels are re-encoded as PNG and the row is
named after a hash of the pixels, never after the file (whose name may hold a UID or a name).

Each split's image sizes go into ``image_sizes.json`` (`shapes`): the aspect a model input can follow.

Each row carries its patient in the `patient` column, so that cross-validation keeps a patient's
images in one fold: the id comes from ``ROOT/patients.csv`` (what `split` writes) or a regular
expression on the file name (`group_regex`, as `split --group-regex`; nothing is read from a DICOM
header), and the column holds a pseudonym of it, the same for every image of the patient in this
dataset (a hash salted anew for each conversion), never the id itself: a dataset pushed to the Hub
carries no patient ids. "" where no id is known.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from spine_hf.data.dataset_folder import dataset_features, write_dataset_dict
from spine_hf.data.imaging import ImageDecodeError, decode
from spine_hf.data.layout import (
    PATIENTS_FILE,
    SPLITS,
    DatasetLayoutError,
    ImageEntry,
    Problem,
    display_path,
    read_patients,
    scan_usable,
)
from spine_hf.data.parallel import map_cpu
from spine_hf.data.shapes import mixed_aspect, write_sizes
from spine_hf.data.split import patient_ids
from spine_hf.data.verify import BURNED_IN_TEXT
from spine_hf.grades import NUM_GRADES, grade_folder
from spine_hf.outputs import staged_folder

logger = logging.getLogger(__name__)


@dataclass
class ConvertReport:
    """What `convert_to_dataset` wrote."""

    out: Path
    # split -> grade -> rows
    counts: dict[str, list[int]]
    # Files whose bytes were kept / re-encoded to canonical PNG / DICOM files de-identified.
    kept: int = 0
    reencoded: int = 0
    dicom: int = 0
    # Rows with a patient id, and where the ids came from ("" when from nowhere).
    with_patient: int = 0
    grouping: str = ""
    problems: list[Problem] = field(default_factory=list)
    seconds: float = 0.0
    # split -> the images' height:width, heights and widths (`shapes.summarise`; image_sizes.json in the dataset).
    sizes: dict = field(default_factory=dict)

    @property
    def images(self) -> int:
        return sum(sum(row) for row in self.counts.values())


@dataclass(frozen=True)
class _Staged:
    split: str
    grade: int
    data_path: str  # where the row's image bytes are: the source file, or its re-encoded copy in staging
    name: str  # the image's name in the dataset
    file: str  # the `file` column
    how: str  # "kept", "reencoded" or "dicom"
    source: str = ""  # the relative path it came from, for messages
    burned_in_text: bool = False
    patient: str = ""
    size: tuple[int, int] = (0, 0)  # (height, width) as converted


def convert_to_dataset(
    root: str | os.PathLike,
    out: str | os.PathLike,
    *,
    overwrite: bool = False,
    push_to_hub: str | None = None,
    private: bool = True,
    workers: int | None = None,
    group_regex: str | None = None,
):
    """Build and save a `DatasetDict` (train/validation/test) from a split tree.

    Args:
        root: ``ROOT/{train,val,test}/<grade folder>/...``.
        out: the DatasetDict folder (`datasets.load_from_disk` reads it); must not exist or be empty
            unless `overwrite`.
        overwrite: replace an existing `out` (only once the new dataset is complete).
        push_to_hub: a repo id to push the dataset to (needs a token from ``hf auth login`` or
            ``HF_TOKEN``).
        private: create the Hub repo as private.
        workers: decoding processes (threads where fork does not exist; default: one per CPU).
        group_regex: the patient id of each image from its file name (first group, or the whole match);
            without it, from ``ROOT/patients.csv`` when there is one.

    Returns:
        The `ConvertReport`; the dataset itself is at `out` (``datasets.load_from_disk``).

    Raises:
        DatasetLayoutError: the tree is not a split tree, has folders of unknown grade, or files
            that cannot be decoded (all are listed; nothing is written).
        ValueError: `group_regex` does not match every file name.
    """
    start = time.perf_counter()
    root, out = Path(root), Path(out)
    not_split = Problem("error", "not_split", ".", "has no train/val/test folders; run `spine-hf data split` first")
    layout, problems = scan_usable(root, "splits", not_split)
    report = ConvertReport(out, counts={}, problems=problems)
    patients = _patients(layout.images, root, group_regex, report)
    with staged_folder(out, overwrite) as staging:  # the dataset appears under its name only once complete
        # Re-encoded images wait inside the staged folder until their bytes are in the Arrow files.
        reencoded = staging / ".reencoded"
        reencoded.mkdir()
        staged = _stage_all(layout.images, reencoded, workers)
        failures = [s for s in staged if isinstance(s, Problem)]
        if failures:
            raise DatasetLayoutError(root, failures)
        rows = [replace(s, patient=patient) for s, patient in zip(staged, patients, strict=True)]
        report.problems += [
            Problem("warning", "burned_in_text", display_path(row.source), BURNED_IN_TEXT)
            for row in rows
            if row.burned_in_text
        ]
        # Arrow straight from the image bytes, the label given per row: no imagefolder inference, so no
        # label can be dropped or re-ordered. A fresh fingerprint: there is no cache to reuse.
        splits = {}
        for split in SPLITS:
            split_rows = [(r.data_path, r.name, r.grade, r.file, r.patient) for r in rows if r.split == split]
            if split_rows:
                splits[split] = split_rows
                report.counts[split] = np.bincount([row[2] for row in split_rows], minlength=NUM_GRADES).tolist()
        for how in ("kept", "reencoded", "dicom"):
            setattr(report, how, sum(r.how == how for r in rows))
        write_dataset_dict(staging, splits, dataset_features(), f"spine-hf-convert-{os.getpid()}-{time.time_ns()}")
        report.sizes = write_sizes(staging, {split: [r.size for r in rows if r.split == split] for split in splits})
        report.problems += [Problem("warning", "mixed_aspect", split, text) for split, summary in report.sizes.items()
                            if (text := mixed_aspect(summary))]  # fmt: skip
        shutil.rmtree(reencoded)
    if push_to_hub:
        import datasets

        datasets.load_from_disk(str(out)).push_to_hub(push_to_hub, private=private)
    report.seconds = time.perf_counter() - start
    return report


def _patients(images: list[ImageEntry], root: Path, group_regex: str | None, report: ConvertReport) -> list[str]:
    """Each image's patient id ("" where none is known); the report says where they came from."""
    if group_regex:
        found = patient_ids(group_regex, [entry.rel for entry in images])
        report.grouping = f"--group-regex '{group_regex}'"
    else:
        known = read_patients(root) or {}
        found = [known.get(entry.rel, "") for entry in images]
        report.grouping = str(root / PATIENTS_FILE) if known else ""
    report.with_patient = sum(bool(patient) for patient in found)
    salt = os.urandom(16)
    found = [_pseudonym(patient, salt) if patient else "" for patient in found]
    if report.with_patient < len(images):
        where = "no --group-regex and no patients.csv" if not report.grouping else f"not in {report.grouping}"
        report.problems.append(Problem(
            "warning", "no_patient_id", ".",
            f"{len(images) - report.with_patient} image(s) have no patient id ({where}): cross-validation treats "
            "each as its own patient, so images of one patient may land in two folds",
        ))  # fmt: skip
    return found


def _pseudonym(patient: str, salt: bytes) -> str:
    """The same short name for the same id within one conversion; the id cannot be read back from it."""
    return "patient-" + hashlib.sha256(salt + patient.encode("utf-8", errors="surrogateescape")).hexdigest()[:12]


def _stage(entry: ImageEntry, index: int, staging: Path) -> _Staged | Problem:
    """Decode one file; images that are not kept byte for byte are re-encoded into the staging folder."""
    try:
        decoded = decode(entry.path)
    except ImageDecodeError as err:
        return Problem("error", err.kind, display_path(entry.rel), f"{err.problem}. {err.fix}")
    # Names that are not valid UTF-8 cannot go into Arrow strings: the row gets a readable stand-in
    # (U+FFFD for the bad bytes) and the `file` column keeps the original, byte-escaped.
    name = os.fsencode(entry.path.name).decode("utf-8", errors="replace")
    in_split = display_path(entry.rel.split("/", 1)[1])
    if decoded.format == "DICOM":
        digest = hashlib.sha256(np.asarray(decoded.image).tobytes()).hexdigest()[:16]
        name = f"dicom-{digest}.png"
        in_split = f"{grade_folder(entry.grade)}/{name}"
        how = "dicom"
    elif decoded.canonical_source:
        how = "kept"
    else:
        name = name if name.lower().endswith(".png") else f"{Path(name).stem}.png"
        how = "reencoded"
    data_path = str(entry.path)
    if how != "kept":
        data_path = str(staging / f"{index:07d}.png")
        decoded.image.save(data_path, format="PNG", compress_level=1)
    return _Staged(entry.split, entry.grade, data_path, name, in_split, how, entry.rel, decoded.burned_in_text,
                   size=(decoded.image.height, decoded.image.width))  # fmt: skip


def _stage_all(entries: list[ImageEntry], staging: Path, workers: int | None) -> list[_Staged | Problem]:
    return map_cpu(_stage, entries, range(len(entries)), [staging] * len(entries), workers=workers)
