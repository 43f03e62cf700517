"""`organize`: a flat pool plus a labels CSV -> grade folders, nothing lost, nothing half-written."""

from __future__ import annotations

import pytest
from factories import digest_tree

from spine_hf.data import organize as organize_module
from spine_hf.data.layout import read_patients
from spine_hf.data.organize import organize


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
    before = digest_tree(raw)
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
    assert digest_tree(raw) == before  # copies, never moves, unless asked
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
    before = digest_tree(out)
    with pytest.raises(ValueError, match="not empty"):
        organize(raw, labels, out)
    assert digest_tree(out) == before


@pytest.mark.parametrize("move", [False, True])
def test_an_interrupted_organize_leaves_no_output_and_loses_no_file(tmp_path, raw, monkeypatch, move):
    labels = tmp_path / "labels.csv"
    labels.write_text("img0.png,0\nimg1.png,1\nimg2.png,4\n")
    before = digest_tree(raw)
    calls = []
    real_place = organize_module.place_file

    def place_then_die(source, destination, link):
        calls.append(destination)
        if len(calls) == 2:
            raise KeyboardInterrupt  # Ctrl-C in the middle of the copy
        real_place(source, destination, link)

    monkeypatch.setattr(organize_module, "place_file", place_then_die)
    with pytest.raises(KeyboardInterrupt):
        organize(raw, labels, tmp_path / "out", move=move)
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.csv", "raw"]  # no staging left either
    assert digest_tree(raw) == before
    monkeypatch.undo()
    report = organize(raw, labels, tmp_path / "out", move=move)  # the rerun simply works
    assert report.placed == [1, 1, 0, 0, 1]
    listed = {"img0.png", "img1.png", "img2.png"}
    after = digest_tree(raw)
    assert after == ({k: v for k, v in before.items() if k not in listed} if move else before)
    assert set(digest_tree(tmp_path / "out").values()) == {before[name] for name in listed}


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
