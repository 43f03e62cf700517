"""`split`: stratified by grade, grouped by patient, deterministic, nothing lost."""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

import pytest
from factories import digest_tree, write_png

from spine_hf.data import split as split_module
from spine_hf.data.layout import read_patients
from spine_hf.data.organize import organize
from spine_hf.data.split import assign_groups, parse_ratios, split_dataset


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
    before = digest_tree(pool)
    report = split_dataset(pool, tmp_path / "out", ratios=(0.6, 0.2, 0.2), seed=1, group_regex=r"^(p\d+)_")
    assert digest_tree(pool) == before
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
    before = digest_tree(pool)
    real_place = split_module.place_file
    calls = []

    def place_then_die(source, destination, link):
        calls.append(destination)
        if len(calls) == 40:
            raise OSError(28, "No space left on device")
        real_place(source, destination, link)

    monkeypatch.setattr(split_module, "place_file", place_then_die)
    with pytest.raises(OSError, match="No space"):
        split_dataset(pool, tmp_path / "o", move=True)
    assert not (tmp_path / "o").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["pool"]  # no staging left either
    assert digest_tree(pool) == before


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
