"""`split`: a pool of grade folders -> ``OUT/{train,val,test}/grade_N``, stratified by grade, grouped by patient.

All images of a patient land in the same split; within that constraint each split gets as close as
possible to its share of every grade, deterministically for a seed. Patient ids come from a regular
expression on the file name, a CSV, or the pool's ``patients.csv``. Like `organize`, it writes a
staged folder that appears as OUT only when complete, never into an existing non-empty OUT, and with
`move=True` removes the sources only after OUT is published.
"""

from __future__ import annotations

import os
import re
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from spine_hf.data.labels_csv import read_patient_ids
from spine_hf.data.layout import (
    PATIENTS_FILE,
    SPLIT_FOLDERS,
    SPLITS,
    ImageEntry,
    Problem,
    display_path,
    read_patients,
    scan_usable,
    unique_name,
    write_patients,
)
from spine_hf.data.verify import undecodable_problems
from spine_hf.grades import NUM_GRADES, grade_folder
from spine_hf.outputs import place_file, staged_folder


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
    already_split = Problem(
        "error", "already_split", ".", "already has train/val/test folders; point split at a pool of grade folders"
    )
    layout, problems = scan_usable(source, "pool", already_split)
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
    plan = _placements(groups, assignment)
    with staged_folder(out, replaceable=False) as staging:
        for entry, rel_out, _ in plan:
            place_file(entry.path, staging / rel_out, link=move)
        if grouping != "none":
            write_patients(staging, {rel_out: group for _, rel_out, group in plan})
        problems += undecodable_problems([(entry.path, rel_out) for entry, rel_out, _ in plan])
    if move:  # OUT is complete: only now do the sources go
        for entry, _, _ in plan:
            entry.path.unlink()
    counts = {split: [0] * NUM_GRADES for split in SPLITS}
    for group, entries in groups.items():
        for entry in entries:
            counts[assignment[group]][entry.grade] += 1
    problems += _missing_grades(counts, ratios)
    group_counts = Counter(assignment.values())
    return SplitReport(
        out=out,
        counts=counts,
        groups={split: group_counts.get(split, 0) for split in SPLITS},
        grouping=grouping,
        problems=problems,
        seconds=time.perf_counter() - start,
    )


def _placements(groups: dict[str, list[ImageEntry]], assignment: dict[str, str]) -> list[tuple[ImageEntry, str, str]]:
    """(image, its path inside OUT, its patient) for every image, patients in the order they were found."""
    plan, taken = [], {}
    for group, entries in groups.items():
        split = assignment[group]
        for entry in entries:
            name = unique_name(taken, (split, entry.grade), entry.rel)
            plan.append((entry, f"{SPLIT_FOLDERS[split]}/{grade_folder(entry.grade)}/{name}", group))
    return plan


def _missing_grades(counts: dict[str, list[int]], ratios: tuple[float, float, float]) -> list[Problem]:
    """A warning for each split that should get images of a grade but gets none."""
    return [
        Problem(
            "warning",
            "grade_missing_in_split",
            SPLIT_FOLDERS[split],
            f"gets no image of grade {grade} (too few patients with that grade)",
        )
        for grade in range(NUM_GRADES)
        for split, ratio in zip(SPLITS, ratios, strict=True)
        if ratio > 0 and counts[split][grade] == 0 and sum(c[grade] for c in counts.values())
    ]


def patient_ids(group_regex: str, files: list[str]) -> list[str]:
    """The patient id of each file from a regular expression on its name (the last part of the path): its
    first group, or the whole match (`split --group-regex`, `convert --group-regex`, `cv --group-regex`).

    Raises:
        ValueError: names the expression does not match (the first five listed).
    """
    pattern = re.compile(group_regex)
    found, unmatched = [], []
    for file in files:
        match = pattern.search(file.rsplit("/", 1)[-1])
        if match is None:
            unmatched.append(file)
        else:
            found.append(match.group(1) if match.groups() else match.group(0))
    if unmatched:
        examples = ", ".join(display_path(rel) for rel in unmatched[:5])
        raise ValueError(
            f"--group-regex {group_regex!r} does not match {len(unmatched)} file name(s), e.g. {examples}; "
            "fix the expression so every file yields a patient id"
        )
    return found


def _groups_for(
    images: list[ImageEntry], source: Path, group_regex: str | None, groups_csv: str | os.PathLike | None
) -> tuple[dict[str, list[ImageEntry]], str]:
    groups: dict[str, list[ImageEntry]] = defaultdict(list)
    if group_regex:
        for entry, patient in zip(images, patient_ids(group_regex, [entry.rel for entry in images]), strict=True):
            groups[patient].append(entry)
        return dict(groups), f"--group-regex '{group_regex}'"
    if groups_csv is not None:
        known = read_patient_ids(Path(groups_csv))
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


def assign_groups(groups: dict[str, list[int]], ratios: tuple[float, float, float], seed: int) -> dict[str, str]:
    """Place each group (patient -> grades of its images) in a split, stratified by grade (`assign_parts`
    with the train, validation and test fractions)."""
    return {name: SPLITS[part] for name, part in assign_parts(groups, ratios, seed).items()}


def assign_parts(groups: dict[str, list[int]], ratios: Sequence[float], seed: int) -> dict[str, int]:
    """Place each group (patient -> grades of its images) in one of ``len(ratios)`` parts, stratified by grade:
    the splits of `split_dataset`, or the folds of cross-validation (equal ratios).

    Greedy: groups are shuffled with the seed, then placed largest first, each into the part
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
    target = ratio[:, None] * totals[None, :]  # part x grade
    weight = 1.0 / np.maximum(totals, 1.0)
    current = np.zeros_like(target)
    assignment = {}
    n_total = max(totals.sum(), 1.0)
    for name in names:
        add = np.bincount(groups[name], minlength=NUM_GRADES).astype(np.float64)
        best, best_cost = None, None
        for s in range(len(ratio)):
            if ratio[s] == 0:
                continue
            grade_cost = (((current[s] + add - target[s]) ** 2 - (current[s] - target[s]) ** 2) * weight).sum()
            size_now, size_target = current[s].sum(), ratio[s] * n_total
            size_cost = ((size_now + add.sum() - size_target) ** 2 - (size_now - size_target) ** 2) / n_total
            cost = grade_cost + size_cost
            if best_cost is None or cost < best_cost - 1e-12:
                best, best_cost = s, cost
        current[best] += add
        assignment[name] = best
    return assignment
