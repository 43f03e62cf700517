"""Reading labels CSVs: with or without a header, any delimiter, names that are not UTF-8."""

from __future__ import annotations

import os

import pytest

from spine_hf.data.labels_csv import read_label_rows, read_patient_ids


def test_a_header_finds_the_columns_by_name_in_any_order(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text("Patient_ID;KL;filename\np1;3;a.png\n\np2;Severe;b.png\n")
    assert read_label_rows(path) == [(2, "a.png", "3", "p1"), (4, "b.png", "Severe", "p2")]


def test_without_a_header_the_columns_are_file_grade_patient(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text("a.png,grade_1\nb.png,0,p9\n")
    assert read_label_rows(path) == [(1, "a.png", "grade_1", ""), (2, "b.png", "0", "p9")]


def test_a_latin1_csv_keeps_the_bytes_of_its_names(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_bytes("file,grade\n\xe9t\xe9.png,2\n".encode("latin-1"))
    ((_, name, grade, _),) = read_label_rows(path)
    assert os.fsencode(name) == "\xe9t\xe9.png".encode("latin-1") and grade == "2"


def test_patient_ids_need_a_patient_column(tmp_path):
    path = tmp_path / "groups.csv"
    path.write_text("file,patient_id\na.png,p1\nb.png,\n")
    assert read_patient_ids(path) == {"a.png": "p1"}
    path.write_text("file,grade\na.png,1\n")
    with pytest.raises(ValueError, match="no patient ids"):
        read_patient_ids(path)
    path.write_text("")
    with pytest.raises(ValueError, match="no rows"):
        read_label_rows(path)
