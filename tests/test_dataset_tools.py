"""init, organize and split: nothing lost, nothing overwritten, no patient in two splits."""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from factories import write_png

from spine_hf.dataset_tools import assign_groups, init_dataset, organize, parse_ratios, split_dataset
from spine_hf.layout import read_patients, scan


def _digest_tree(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_init_creates_the_layout_and_is_idempotent(tmp_path):
    created = init_dataset(tmp_path / "ds")
    assert len(created) == 15
    assert (tmp_path / "ds" / "val" / "grade_4").is_dir()
    assert init_dataset(tmp_path / "ds") == []
    assert scan(tmp_path / "ds").kind == "splits"


# ------------------------------------------------------------------------------------- organize


@pytest.fixture
def raw(tmp_path) -> Path:
    folder = tmp_path / "raw"
    for i in range(6):
        write_png(folder / f"img{i}.png", seed=i)
    write_png(folder / "sub" / "deep.png", seed=50)
    return folder


def test_organize_sorts_by_csv_and_reports_every_bad_row_by_line(tmp_path, raw):
    labels = tmp_path / "labels.csv"
    labels.write_text(
        "file,grade,patient_id\n"
        "img0.png,0,p1\n"  # line 2
        "img1.png,Moderate,p1\n"  # line 3
        "img2.png,grade_4,p2\n"  # line 4
        "missing.png,1,p3\n"  # line 5: no such file
        "img3.png,7,p3\n"  # line 6: unknown grade
        "img0.png,0,p1\n"  # line 7: duplicate row
        "img2.png,1,p2\n"  # line 8: same file, other grade
        "deep.png,2,\n"  # line 9: found in a sub-folder, no patient id
        "../etc/passwd,1,p9\n"  # line 10: outside the image folder
    )
    before = _digest_tree(raw)
    report = organize(raw, labels, tmp_path / "out")
    found = {(p.code, p.path) for p in report.problems}
    assert ("missing_file", "labels.csv:5") in found
    assert ("unknown_grade", "labels.csv:6") in found
    assert ("duplicate_row", "labels.csv:7") in found
    assert ("conflicting_rows", "labels.csv:8") in found
    assert ("missing_file", "labels.csv:10") in found
    assert {p.path for p in report.problems if p.code == "not_in_csv"} == {"img3.png", "img4.png", "img5.png"}
    assert report.placed == [1, 0, 1, 1, 1]
    assert (tmp_path / "out" / "grade_3" / "img1.png").is_file()
    assert (tmp_path / "out" / "grade_2" / "deep.png").is_file()
    assert _digest_tree(raw) == before  # copies, never moves, unless asked
    assert read_patients(tmp_path / "out") == {
        "grade_0/img0.png": "p1",
        "grade_3/img1.png": "p1",
        "grade_4/img2.png": "p2",
    }


def test_organize_never_touches_an_existing_output(tmp_path, raw):
    labels = tmp_path / "labels.csv"
    labels.write_text("img0.png,0\nimg1.png,1\n")  # no header: file,grade
    out = tmp_path / "out"
    first = organize(raw, labels, out)
    assert first.placed == [1, 1, 0, 0, 0] and not first.errors
    before = _digest_tree(out)
    with pytest.raises(ValueError, match="not empty"):
        organize(raw, labels, out)
    assert _digest_tree(out) == before


@pytest.mark.parametrize("move", [False, True])
def test_an_interrupted_organize_leaves_no_output_and_loses_no_file(tmp_path, raw, monkeypatch, move):
    from spine_hf import dataset_tools

    labels = tmp_path / "labels.csv"
    labels.write_text("img0.png,0\nimg1.png,1\nimg2.png,4\n")
    before = _digest_tree(raw)
    calls = []
    real_place = dataset_tools._StagedOutput.place

    def place_then_die(self, source, rel):
        calls.append(rel)
        if len(calls) == 2:
            raise KeyboardInterrupt  # Ctrl-C in the middle of the copy
        real_place(self, source, rel)

    monkeypatch.setattr(dataset_tools._StagedOutput, "place", place_then_die)
    with pytest.raises(KeyboardInterrupt):
        organize(raw, labels, tmp_path / "out", move=move)
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.csv", "raw"]  # no staging left either
    assert _digest_tree(raw) == before
    monkeypatch.undo()
    report = organize(raw, labels, tmp_path / "out", move=move)  # the rerun simply works
    assert report.placed == [1, 1, 0, 0, 1]
    listed = {"img0.png", "img1.png", "img2.png"}
    after = _digest_tree(raw)
    assert after == ({k: v for k, v in before.items() if k not in listed} if move else before)
    assert set(_digest_tree(tmp_path / "out").values()) == {before[name] for name in listed}


def test_organize_moves_only_when_asked(tmp_path, raw):
    labels = tmp_path / "labels.csv"
    labels.write_text("file;label\nimg0.png;Severe\n")  # semicolons and other column names
    organize(raw, labels, tmp_path / "out", move=True)
    assert not (raw / "img0.png").exists()
    assert (tmp_path / "out" / "grade_4" / "img0.png").is_file()


def test_organize_rejects_a_csv_without_a_grade_column(tmp_path, raw):
    labels = tmp_path / "labels.csv"
    labels.write_text("file,comment\nimg0.png,nice\n")
    with pytest.raises(ValueError, match="no grade column"):
        organize(raw, labels, tmp_path / "out")


# ---------------------------------------------------------------------------------------- split


@pytest.fixture
def pool(tmp_path) -> Path:
    """60 patients with 1-3 images each, grades skewed like real data, file names `p<id>_<n>.png`."""
    folder = tmp_path / "pool"
    seed = 0
    for patient in range(60):
        grade = [0, 0, 0, 1, 1, 2, 2, 3, 4][patient % 9]
        for view in range(1 + patient % 3):
            write_png(folder / f"{grade}" / f"p{patient:03d}_{view}.png", seed=seed)
            seed += 1
    return folder


def _split_contents(out: Path) -> dict[str, set[str]]:
    contents = defaultdict(set)
    for path in out.rglob("*.png"):
        contents[path.relative_to(out).parts[0]].add(path.name)
    return contents


def test_split_groups_patients_stratifies_and_loses_nothing(tmp_path, pool):
    before = _digest_tree(pool)
    report = split_dataset(pool, tmp_path / "out", ratios=(0.6, 0.2, 0.2), seed=1, group_regex=r"^(p\d+)_")
    assert _digest_tree(pool) == before
    contents = _split_contents(tmp_path / "out")
    names = [name for files in contents.values() for name in files]
    assert sorted(names) == sorted(p.name for p in pool.rglob("*.png"))  # every file exactly once
    patient_splits = defaultdict(set)
    for split, files in contents.items():
        for name in files:
            patient_splits[name.split("_")[0]].add(split)
    assert all(len(s) == 1 for s in patient_splits.values())
    total = sum(sum(c) for c in report.counts.values())
    for split, share in (("train", 0.6), ("validation", 0.2), ("test", 0.2)):
        assert abs(sum(report.counts[split]) / total - share) < 0.08
    for grade in range(5):  # every split gets its share of every grade, within a patient or two
        graded = sum(report.counts[s][grade] for s in report.counts)
        assert abs(report.counts["train"][grade] - 0.6 * graded) <= 3
    assert sum(report.groups.values()) == 60
    assert set(read_patients(tmp_path / "out").values()) == {f"p{i:03d}" for i in range(60)}


def test_split_is_deterministic_for_a_seed(tmp_path, pool):
    runs = [
        _split_contents(split_dataset(pool, tmp_path / f"o{i}", seed=s, group_regex=r"^(p\d+)").out)
        for i, s in enumerate([5, 5, 6])
    ]
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


def test_split_refuses_unmatched_names_and_non_empty_output(tmp_path, pool):
    with pytest.raises(ValueError, match="does not match 101 file name"):
        split_dataset(pool, tmp_path / "o", group_regex=r"^(p00\d)_")  # p000..p009 only: most do not match
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("keep me")
    with pytest.raises(ValueError, match="not empty"):
        split_dataset(pool, tmp_path / "busy")


def test_an_interrupted_split_leaves_no_output_and_loses_no_file(tmp_path, pool, monkeypatch):
    from spine_hf import dataset_tools

    before = _digest_tree(pool)
    real_place = dataset_tools._StagedOutput.place
    calls = []

    def place_then_die(self, source, rel):
        calls.append(rel)
        if len(calls) == 40:
            raise OSError(28, "No space left on device")
        real_place(self, source, rel)

    monkeypatch.setattr(dataset_tools._StagedOutput, "place", place_then_die)
    with pytest.raises(OSError, match="No space"):
        split_dataset(pool, tmp_path / "o", move=True)
    assert not (tmp_path / "o").exists() and not (tmp_path / ".o.partial").exists()
    assert _digest_tree(pool) == before


def test_split_without_patient_ids_warns(tmp_path, pool):
    report = split_dataset(pool, tmp_path / "o")
    assert "no_grouping" in {p.code for p in report.problems}


def test_split_reads_patients_csv_from_organize(tmp_path, raw):
    labels = tmp_path / "labels.csv"
    labels.write_text("file,grade,patient_id\n" + "".join(f"img{i}.png,{i % 2},pat{i // 2}\n" for i in range(6)))
    organize(raw, labels, tmp_path / "pool")
    report = split_dataset(tmp_path / "pool", tmp_path / "out", ratios=(0.5, 0.5, 0.0))
    assert report.grouping.endswith("patients.csv")
    assert sum(report.groups.values()) == 3
    assert sum(report.counts["test"]) == 0


def test_parse_ratios():
    assert parse_ratios("0.8,0.1,0.1") == (0.8, 0.1, 0.1)
    for bad in ("0.5,0.5", "0.7,0.2,0.2", "a,b,c", "1.2,-0.1,-0.1"):
        with pytest.raises(ValueError, match="ratios"):
            parse_ratios(bad)


def test_assign_groups_balances_rare_grades():
    groups = {f"g{i}": [i % 5] * (1 + i % 2) for i in range(100)}
    assignment = assign_groups(groups, (0.7, 0.15, 0.15), seed=0)
    per_split = Counter()
    for name, split in assignment.items():
        for grade in groups[name]:
            per_split[(split, grade)] += 1
    for grade in range(5):
        total = sum(per_split[(s, grade)] for s in ("train", "validation", "test"))
        assert per_split[("test", grade)] >= round(0.15 * total) - 2


# ------------------------------------------------------------------------- property: nothing lost

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    patients=st.lists(st.tuples(st.integers(0, 4), st.integers(1, 3)), min_size=1, max_size=25),
    seed=st.integers(0, 10_000),
    ratios=st.sampled_from([(0.7, 0.15, 0.15), (0.8, 0.2, 0.0), (0.34, 0.33, 0.33), (1.0, 0.0, 0.0)]),
)
def test_every_file_lands_in_exactly_one_split_and_patients_stay_together(tmp_path_factory, patients, seed, ratios):
    root = tmp_path_factory.mktemp("prop")
    pool = root / "pool"
    names = []
    for number, (grade, views) in enumerate(patients):
        for view in range(views):
            name = f"p{number:03d}_{view}.png"
            path = pool / f"grade_{grade}" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(name.encode())  # split copies bytes; it never decodes
            names.append(name)
    split_dataset(pool, root / "out", ratios=ratios, seed=seed, group_regex=r"^(p\d+)_")
    placed = list((root / "out").rglob("*.png"))
    assert sorted(p.name for p in placed) == sorted(names)
    splits_of = defaultdict(set)
    for path in placed:
        splits_of[path.name.split("_")[0]].add(path.relative_to(root / "out").parts[0])
        assert path.read_bytes() == path.name.encode()
    assert all(len(s) == 1 for s in splits_of.values())
    assert sorted(p.name for p in pool.rglob("*.png")) == sorted(names)  # sources untouched
