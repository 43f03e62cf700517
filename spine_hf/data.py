"""Grade folders -> a Hugging Face `datasets.DatasetDict` (`spine-hf data convert`), and back to disk.

Every image goes through the project's decoder on the way in, so the dataset holds canonical
8-bit grayscale images: 16-bit PNG and DICOM are converted once here, never again at training
time. Files that already are plain 8-bit grayscale PNG/JPEG without metadata keep their bytes.
The rows are written straight to Arrow (``Dataset.from_generator``) with the label given per row, so
no label is inferred from folder names, sorted as a string or dropped for uneven depths (the
traps of datasets' ``imagefolder``), and every scanned image is counted into the dataset.

DICOM files leave nothing of their header behind: the pixels are re-encoded as PNG and the row is
named after a hash of the pixels, never after the file (whose name may hold a UID or a name).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from spine_hf.dataset_writer import write_dataset_dict
from spine_hf.grades import GRADE_NAMES, NUM_GRADES, grade_folder
from spine_hf.imaging import ImageDecodeError, decode
from spine_hf.layout import (
    STRUCTURAL_ERRORS,
    DatasetLayoutError,
    ImageEntry,
    Problem,
    display_path,
    require_usable,
    scan,
    tolerated_problems,
)
from spine_hf.outputs import check_new_output, staged_folder
from spine_hf.parallel import map_cpu
from spine_hf.verify import BURNED_IN_TEXT

logger = logging.getLogger(__name__)

SPLIT_NAMES = ("train", "validation", "test")


def dataset_features():
    """The features of every dataset this project writes: image, grade label, source file."""
    from datasets import ClassLabel, Features, Image, Value

    return Features({"image": Image(), "label": ClassLabel(names=list(GRADE_NAMES)), "file": Value("string")})


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
    problems: list[Problem] = field(default_factory=list)
    seconds: float = 0.0

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


def convert_to_dataset(
    root: str | os.PathLike,
    out: str | os.PathLike,
    *,
    overwrite: bool = False,
    push_to_hub: str | None = None,
    private: bool = True,
    workers: int | None = None,
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

    Returns:
        The `ConvertReport`; the dataset itself is at `out` (``datasets.load_from_disk``).

    Raises:
        DatasetLayoutError: the tree is not a split tree, has folders of unknown grade, or files
            that cannot be decoded (all are listed; nothing is written).
    """
    import datasets

    start = time.perf_counter()
    root, out = Path(root), Path(out)
    layout = scan(root)
    if layout.kind != "splits":
        raise DatasetLayoutError(
            root,
            [Problem("error", "not_split", ".", "has no train/val/test folders; run `spine-hf data split` first")],
        )
    require_usable(layout, STRUCTURAL_ERRORS | {"broken_link"})
    check_new_output(out, overwrite)
    report = ConvertReport(out, counts={})
    report.problems = tolerated_problems(layout)
    staging = out.parent / f".{out.name}.staging-{os.getpid()}"
    try:
        staging.mkdir(parents=True)
        staged = _stage_all(layout.images, staging, workers)
        failures = [s for s in staged if isinstance(s, Problem)]
        if failures:
            raise DatasetLayoutError(root, failures)
        rows = [s for s in staged if isinstance(s, _Staged)]
        report.problems += [
            Problem("warning", "burned_in_text", display_path(row.source), BURNED_IN_TEXT)
            for row in rows
            if row.burned_in_text
        ]
        # Arrow straight from the image bytes, the label given per row: no imagefolder inference, so no
        # label can be dropped or re-ordered. A fresh fingerprint: there is no cache to reuse.
        splits = {}
        for split in SPLIT_NAMES:
            split_rows = [(r.data_path, r.name, r.grade, r.file) for r in rows if r.split == split]
            if split_rows:
                splits[split] = split_rows
                report.counts[split] = np.bincount([row[2] for row in split_rows], minlength=NUM_GRADES).tolist()
        for how in ("kept", "reencoded", "dicom"):
            setattr(report, how, sum(r.how == how for r in rows))
        with staged_folder(out, overwrite) as partial:  # the dataset appears under its name only once complete
            write_dataset_dict(partial, splits, dataset_features(), f"spine-hf-convert-{os.getpid()}-{time.time_ns()}")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if push_to_hub:
        datasets.load_from_disk(str(out)).push_to_hub(push_to_hub, private=private)
    report.seconds = time.perf_counter() - start
    return report


def load_grade_dataset(path: str | os.PathLike):
    """Load a dataset written by `convert_to_dataset` and check that it has the grade labels."""
    import datasets

    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"{path}: no such dataset folder; build one with `spine-hf data convert IMAGES {path}`")
    if (folder / "state.json").is_file():
        raise ValueError(f"{path} holds a single Dataset; spine-hf needs a DatasetDict with named splits")
    if not (folder / "dataset_dict.json").is_file():
        if scan(folder).images:
            raise ValueError(
                f"{path} is a folder of images, not a converted dataset; run `spine-hf data convert {path} OUT` "
                "and pass OUT"
            )
        raise ValueError(f"{path} is not a dataset written by `spine-hf data convert` (no dataset_dict.json)")
    dataset = datasets.load_from_disk(str(path))
    for split, part in dataset.items():
        label = part.features.get("label")
        if "image" not in part.features or getattr(label, "names", None) != list(GRADE_NAMES):
            raise ValueError(
                f"{path} ({split}) is not a spine-hf dataset: expected an image column and a label ClassLabel "
                f"named {list(GRADE_NAMES)}, found {part.features}; build it with `spine-hf data convert`"
            )
    return dataset


def load_grade_split(path: str | os.PathLike, split: str):
    """One split of a dataset written by `convert_to_dataset`; the error names the splits there are."""
    dataset = load_grade_dataset(path)
    if split not in dataset:
        raise ValueError(f"{path} has no split {split!r} (it has {sorted(dataset)})")
    return dataset[split]


def row_failure(index: int, name: str | None, err: ImageDecodeError) -> str:
    """How one undecodable row of a dataset is listed: `row N (file): problem`."""
    return f"row {index} ({display_path(name or 'embedded image')}): {err.problem}"


def undecodable_rows(failures: list[str]) -> ValueError:
    """One error listing the rows of a dataset that cannot be decoded (the first 20), pointing to `convert`."""
    more = f"\n  ... and {len(failures) - 20} more" if len(failures) > 20 else ""
    return ValueError(
        f"{len(failures)} images of this dataset cannot be decoded (rebuild it with `spine-hf data convert`, "
        "which checks every image):\n  " + "\n  ".join(failures[:20]) + more
    )


def decode_split(rows) -> list:
    """Every image of a dataset split as a canonical PIL image; one error lists every row that fails."""
    from datasets import Image as ImageFeature

    from spine_hf.imaging import decode_image

    cells = rows.cast_column("image", ImageFeature(decode=False))["image"]
    names = rows["file"] if "file" in rows.column_names else [cell.get("path") or "" for cell in cells]

    def one(index: int):
        cell = cells[index]
        try:
            return decode_image(cell["bytes"] if cell.get("bytes") is not None else cell["path"])
        except ImageDecodeError as err:
            return row_failure(index, names[index], err)

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        images = list(pool.map(one, range(len(cells))))
    failures = [image for image in images if isinstance(image, str)]
    if failures:
        raise undecodable_rows(failures)
    return images


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
    return _Staged(entry.split, entry.grade, data_path, name, in_split, how, entry.rel, decoded.burned_in_text)


def _stage_all(entries: list[ImageEntry], staging: Path, workers: int | None) -> list[_Staged | Problem]:
    return map_cpu(_stage, entries, range(len(entries)), [staging] * len(entries), workers=workers)
