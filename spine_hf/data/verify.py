"""`spine-hf data verify`: everything that can be wrong with a folder of graded radiographs.

Every image is decoded with the project's decoder, so what verify passes is exactly what training
will read. Errors (exit status 1) are things that make the data wrong or unusable: unreadable files,
leakage between splits, layouts that lose labels. Warnings are worth a look but do not fail.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from spine_hf.data.imaging import ImageDecodeError, decode
from spine_hf.data.layout import ImageEntry, Layout, Problem, display_path, read_patients, scan
from spine_hf.data.parallel import map_cpu
from spine_hf.data.shapes import mixed_aspect, summarise
from spine_hf.grades import NUM_GRADES

# Cosine similarity of standardised 32 x 32 thumbnails at or above which two images are near
# duplicates. Measured on the 4,826 knee radiographs: the closest images of two different patients
# reach 0.983, while a JPEG re-encode (q=70), a resize, a gamma/brightness change or added noise
# of the same image stay above 0.998.
NEAR_DUPLICATE_SIMILARITY = 0.995
FINGERPRINT_SIDE = 32
# Near-duplicate pairs listed one by one; past this, a count (a folder of near-identical images
# would otherwise produce a quadratic report).
MAX_NEAR_PAIRS = 500
# Thumbnail statistics (0..255) below / above which an image is flagged.
NEAR_BLANK_STD = 3.0
DARK_MEAN = 20.0
BRIGHT_MEAN = 235.0
MIN_SIDE = 32


@dataclass(frozen=True)
class ImageFacts:
    """What verify learns about one decodable image."""

    pixel_hash: str
    # Standardised (zero mean, unit norm) 32 x 32 thumbnail, for near-duplicate search.
    fingerprint: np.ndarray
    mean: float
    std: float
    width: int
    height: int
    # e.g. "8-bit grayscale", "16-bit grayscale", "8-bit RGB", "DICOM MONOCHROME1 12-bit"
    kind: str
    # DICOM that declares burned-in annotation (text in the pixels).
    burned_in_text: bool = False


@dataclass
class VerifyReport:
    """The outcome of `verify_dataset`."""

    root: str
    layout: str
    # split ("pool" for a pool) -> grade -> number of readable images
    counts: dict[str, list[int]]
    images: int
    problems: list[Problem] = field(default_factory=list)
    # How patient leakage was checked ("patients.csv: 413 patients"), or None when it was not.
    patients: str | None = None
    seconds: float = 0.0

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_json(self) -> dict:
        return {
            "root": self.root,
            "layout": self.layout,
            "ok": self.ok,
            "images": self.images,
            "counts": self.counts,
            "patients": self.patients,
            "errors": len(self.errors),
            "warnings": len(self.warnings),
            "seconds": round(self.seconds, 3),
            "problems": [asdict(p) for p in self.problems],
        }

    def write_json(self, path: str | os.PathLike) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=2) + "\n", encoding="utf-8")


BURNED_IN_TEXT = (
    "is a DICOM whose pixels carry burned-in text (BurnedInAnnotation=YES), which may identify the patient; "
    "`convert` drops the header but keeps the pixels: mask the text before sharing the dataset"
)


def verify_dataset(
    root: str | os.PathLike,
    *,
    group_regex: str | None = None,
    near_duplicate_similarity: float = NEAR_DUPLICATE_SIMILARITY,
    workers: int | None = None,
) -> VerifyReport:
    """Check a split tree or a pool; see the module docstring.

    Args:
        root: the dataset folder.
        group_regex: a regular expression on the file name whose first group (or whole match) is
            the patient id; when absent, ``ROOT/patients.csv`` is used if it exists.
        near_duplicate_similarity: thumbnail cosine similarity from which two images are near duplicates.
        workers: decoding processes (threads where fork does not exist; default: one per CPU).
    """
    start = time.perf_counter()
    layout = scan(root)
    facts = _inspect_all(layout, workers)
    problems = list(layout.problems)
    problems += _decode_problems(facts)
    readable = {entry: fact for entry, fact in facts.items() if isinstance(fact, ImageFacts)}
    problems += _quality_problems(readable)
    problems += _format_problems(readable)
    problems += _duplicate_problems(readable, near_duplicate_similarity)
    problems += _aspect_problems(readable)
    patient_problems, patients = _patient_problems(layout, group_regex)
    problems += patient_problems
    counts: dict[str, list[int]] = {}
    for split in layout.splits:
        counts[split or "pool"] = [0] * NUM_GRADES
    for entry in readable:
        counts[entry.split or "pool"][entry.grade] += 1
    with_files = {(entry.split, entry.grade) for entry in layout.images}
    for (split, grade), folders in layout.grade_folders.items():
        if (split, grade) in with_files and not counts.get(split or "pool", [0] * NUM_GRADES)[grade]:
            problems.append(Problem("error", "no_readable_images", folders[0], "none of its images can be read"))
    order = {"error": 0, "warning": 1, "info": 2}
    problems.sort(key=lambda p: (order[p.severity], p.code, p.path))
    return VerifyReport(
        root=str(layout.root),
        layout=layout.kind,
        counts=counts,
        images=len(readable),
        problems=problems,
        patients=patients,
        seconds=time.perf_counter() - start,
    )


def undecodable_problems(files: list[tuple[Path, str]], workers: int | None = None) -> list[Problem]:
    """Warnings for the (path, name shown) files the project's decoder refuses: placed, but unusable."""

    failures = map_cpu(_refusal, [path for path, _ in files], workers=workers)
    return [
        Problem(
            "warning",
            err.kind,
            display_path(shown),
            f"{err.problem}. {err.fix} (placed unchanged; `verify` and `convert` refuse it until it is fixed)",
        )
        for (_, shown), err in zip(files, failures, strict=True)
        if err is not None
    ]


def _refusal(path: Path) -> ImageDecodeError | None:
    try:
        decode(path)
    except ImageDecodeError as err:
        return err
    return None


def _inspect_all(layout: Layout, workers: int | None) -> dict[ImageEntry, ImageFacts | ImageDecodeError]:
    return dict(zip(layout.images, map_cpu(_inspect, layout.images, workers=workers), strict=True))


def _inspect(entry: ImageEntry) -> ImageFacts | ImageDecodeError:
    try:
        decoded = decode(entry.path)
    except ImageDecodeError as err:
        return err
    image = decoded.image
    pixels = np.asarray(image)
    thumb = image.resize((64, 64), Image.Resampling.BOX)
    stats = np.asarray(thumb, dtype=np.float64)
    small = np.asarray(thumb.resize((FINGERPRINT_SIDE,) * 2, Image.Resampling.BOX), dtype=np.float32).ravel()
    small -= small.mean()
    fingerprint = small / max(float(np.linalg.norm(small)), 1e-6)
    if decoded.format == "DICOM":
        kind = f"DICOM {decoded.mode} {decoded.bits}-bit"
    elif decoded.mode in ("L", "I;16", "I;16B", "I;16L", "I", "F", "1"):
        kind = f"{decoded.bits}-bit grayscale"
    else:
        kind = f"8-bit {decoded.mode}"
    return ImageFacts(
        pixel_hash=hashlib.sha1(pixels.tobytes() + str(pixels.shape).encode()).hexdigest(),
        fingerprint=fingerprint,
        mean=float(stats.mean()),
        std=float(stats.std()),
        width=image.width,
        height=image.height,
        kind=kind,
        burned_in_text=decoded.burned_in_text,
    )


def _aspect_problems(facts: dict[ImageEntry, ImageFacts]) -> list[Problem]:
    """A warning for each split (or the pool) whose aspects look like two kinds of film (`shapes.mixed_aspect`)."""
    by_split: dict[str, list[tuple[int, int]]] = {}
    for entry, fact in facts.items():
        by_split.setdefault(entry.split or "pool", []).append((fact.height, fact.width))
    found = ((split, mixed_aspect(summarise(sizes))) for split, sizes in sorted(by_split.items()))
    return [Problem("warning", "mixed_aspect", split, text) for split, text in found if text]


def _decode_problems(facts: dict[ImageEntry, ImageFacts | ImageDecodeError]) -> list[Problem]:
    return [
        Problem("error", fact.kind, display_path(entry.rel), f"{fact.problem}. {fact.fix}")
        for entry, fact in facts.items()
        if isinstance(fact, ImageDecodeError)
    ]


def _quality_problems(facts: dict[ImageEntry, ImageFacts]) -> list[Problem]:
    problems = []
    for entry, fact in facts.items():
        rel = display_path(entry.rel)
        if fact.std < NEAR_BLANK_STD:
            problems.append(
                Problem("warning", "near_blank", rel, f"is nearly uniform (mean {fact.mean:.0f}, std {fact.std:.1f})")
            )
        elif fact.mean < DARK_MEAN:
            problems.append(Problem("warning", "very_dark", rel, f"is very dark (mean {fact.mean:.0f} of 255)"))
        elif fact.mean > BRIGHT_MEAN:
            problems.append(
                Problem("warning", "very_bright", rel, f"is nearly white (mean {fact.mean:.0f} of 255): saturated?")
            )
        if min(fact.width, fact.height) < MIN_SIDE:
            problems.append(Problem("warning", "tiny_image", rel, f"is only {fact.width} x {fact.height} pixels"))
    return problems


def _format_problems(facts: dict[ImageEntry, ImageFacts]) -> list[Problem]:
    problems = [
        Problem("warning", "burned_in_text", display_path(entry.rel), BURNED_IN_TEXT)
        for entry, fact in facts.items()
        if fact.burned_in_text
    ]
    kinds = Counter(fact.kind for fact in facts.values())
    if len(kinds) <= 1:
        return problems
    listing = ", ".join(f"{n} {kind}" for kind, n in kinds.most_common())
    return problems + [
        Problem(
            "warning",
            "mixed_formats",
            ".",
            f"mixed bit depths / colour modes ({listing}); all decode to 8-bit grayscale, "
            "but check that the sources are comparable",
        )
    ]


def _duplicate_problems(facts: dict[ImageEntry, ImageFacts], similarity: float) -> list[Problem]:
    problems = []
    by_hash: dict[str, list[ImageEntry]] = defaultdict(list)
    for entry, fact in facts.items():
        by_hash[fact.pixel_hash].append(entry)
    for group in by_hash.values():
        if len(group) < 2:
            continue
        first, names = group[0], ", ".join(display_path(e.rel) for e in group)
        splits = {e.split for e in group}
        grades = {e.grade for e in group}
        if len(splits) > 1:
            problems.append(
                Problem(
                    "error",
                    "leakage_exact",
                    display_path(first.rel),
                    f"the same image is in several splits ({names}): test results would be inflated; keep one copy",
                )
            )
        elif len(grades) > 1:
            problems.append(
                Problem(
                    "error",
                    "conflicting_labels",
                    display_path(first.rel),
                    f"the same image has different grades ({names}); keep the right one",
                )
            )
        else:
            problems.append(
                Problem("warning", "duplicate", display_path(first.rel), f"the same image appears twice ({names})")
            )
    exact = {e for group in by_hash.values() if len(group) > 1 for e in group}
    entries = [e for e in facts if e not in exact]
    fingerprints = np.stack([facts[e].fingerprint for e in entries]) if entries else np.zeros((0, 1), np.float32)
    pairs = _near_pairs(fingerprints, similarity)
    if len(pairs) > MAX_NEAR_PAIRS:
        problems.append(
            Problem(
                "warning",
                "near_duplicate",
                ".",
                f"{len(pairs)} near-duplicate pairs; the first {MAX_NEAR_PAIRS} are listed (cross-split ones first)",
            )
        )
        pairs.sort(key=lambda pair: entries[pair[0]].split == entries[pair[1]].split)
        pairs = pairs[:MAX_NEAR_PAIRS]
    for i, j in pairs:
        a, b = entries[i], entries[j]
        across = a.split != b.split
        problems.append(
            Problem(
                "warning",
                "near_duplicate_across_splits" if across else "near_duplicate",
                display_path(a.rel),
                f"looks almost identical to {display_path(b.rel)}"
                + (" in another split: possible leakage" if across else ""),
            )
        )
    return problems


def _near_pairs(fingerprints: np.ndarray, similarity: float, block: int = 1024) -> list[tuple[int, int]]:
    """Index pairs (i < j) whose fingerprints have a cosine similarity of at least `similarity`."""
    pairs = []
    for start in range(0, len(fingerprints), block):
        scores = fingerprints[start : start + block] @ fingerprints.T
        for i, j in zip(*np.nonzero(scores >= similarity), strict=True):
            i = int(i) + start
            if i < int(j):
                pairs.append((i, int(j)))
    return pairs


def _patient_problems(layout: Layout, group_regex: str | None) -> tuple[list[Problem], str | None]:
    """Patients with images in two splits; also says where the patient ids came from."""
    if layout.kind != "splits":
        return [], None
    if group_regex:
        pattern = re.compile(group_regex)
        groups = {}
        for entry in layout.images:
            match = pattern.search(entry.path.name)
            if match:
                groups[entry.rel] = match.group(1) if match.groups() else match.group(0)
        source = f"--group-regex '{group_regex}'"
    else:
        groups = read_patients(layout.root) or {}
        source = "patients.csv"
    if not groups:
        return [
            Problem(
                "warning",
                "no_patient_ids",
                ".",
                "no patient ids (no --group-regex, no patients.csv): patient leakage was not checked",
            )
        ], None
    problems = []
    unmatched = [e.rel for e in layout.images if e.rel not in groups]
    if unmatched:
        problems.append(
            Problem(
                "warning",
                "no_patient_id",
                display_path(unmatched[0]),
                f"{len(unmatched)} image(s) have no patient id from {source} (first: {display_path(unmatched[0])})",
            )
        )
    splits_of: dict[str, set[str]] = defaultdict(set)
    split_by_rel = {e.rel: e.split for e in layout.images}
    for rel, patient in groups.items():
        if rel in split_by_rel:
            splits_of[patient].add(split_by_rel[rel])
    for patient, splits in sorted(splits_of.items()):
        if len(splits) > 1:
            problems.append(
                Problem(
                    "error",
                    "patient_leakage",
                    f"patient {patient}",
                    f"has images in several splits ({', '.join(sorted(splits))}); "
                    "re-split with `spine-hf data split` grouped by patient",
                )
            )
    return problems, f"{source}: {len(splits_of)} patients"
