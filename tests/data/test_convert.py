"""convert: grade folders -> DatasetDict with the grade names, canonical pixels and no DICOM identifiers."""

from __future__ import annotations

import numpy as np
import pytest
from factories import PATIENT_ID, PATIENT_NAME, write_dicom, write_png

from spine_hf.data.convert import convert_to_dataset
from spine_hf.data.dataset_folder import load_grade_dataset
from spine_hf.data.imaging import decode_image
from spine_hf.data.layout import DatasetLayoutError
from spine_hf.grades import GRADE_NAMES


def test_phantoms_convert_to_a_datasetdict_with_the_grade_names(tmp_path, phantom_split):
    report = convert_to_dataset(phantom_split, tmp_path / "ds")
    dataset = load_grade_dataset(tmp_path / "ds")
    assert set(dataset) == {"train", "validation", "test"}
    assert dataset["train"].features["label"].names == list(GRADE_NAMES)
    assert report.images == sum(part.num_rows for part in dataset.values()) == 30
    folder = {"train": "train", "validation": "val", "test": "test"}
    for split, part in dataset.items():
        assert np.bincount(list(part["label"]), minlength=5).tolist() == report.counts[split]
        for row in part:
            assert row["image"].mode == "L"
            source = phantom_split / folder[split] / row["file"]
            assert row["file"].startswith(f"grade_{row['label']}/")
            # Pixels in the dataset are exactly what the project's decoder makes of the source,
            # 16-bit phantoms included.
            np.testing.assert_array_equal(np.asarray(row["image"]), np.asarray(decode_image(source)))
    assert report.reencoded == 30  # phantoms carry a text chunk, so none is kept byte for byte


def test_dicom_is_decoded_and_leaves_no_identifier_behind(tmp_path):
    root = tmp_path / "tree"
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for grade in range(5):
            pixels = rng.integers(0, 4096, (40, 40)).astype(np.uint16)
            # The file name itself carries the patient id, as exports often do.
            write_dicom(root / split / f"grade_{grade}" / f"{PATIENT_ID}_{grade}.dcm", pixels, BitsStored=12)
            write_png(root / split / f"grade_{grade}" / f"plain_{grade}.png", seed=grade + 10 * len(split))
    # The patient id in the file names groups the images, as a pseudonym: the id itself never goes in.
    report = convert_to_dataset(root, tmp_path / "ds", group_regex=r"^([^_]+)_")
    assert report.dicom == 10 and report.kept == 10 and report.with_patient == 20
    secrets = [PATIENT_NAME, PATIENT_ID, "Doe", "St Example Hospital", "19580214"]
    for path in (tmp_path / "ds").rglob("*"):
        if path.is_file():
            blob = path.read_bytes()
            for secret in secrets:
                assert secret.encode() not in blob, f"{secret} found in {path}"
    dataset = load_grade_dataset(tmp_path / "ds")
    files = list(dataset["train"]["file"]) + list(dataset["validation"]["file"])
    assert not [f for f in files if PATIENT_ID in f]
    assert sum(f.split("/")[-1].startswith("dicom-") for f in files) == 10
    patients = list(dataset["train"]["patient"]) + list(dataset["validation"]["patient"])
    dicom_patients = {p for f, p in zip(files, patients, strict=True) if f.split("/")[-1].startswith("dicom-")}
    assert len(dicom_patients) == 1 and PATIENT_ID not in next(iter(dicom_patients))
    plain = {p for f, p in zip(files, patients, strict=True) if "plain" in f}
    assert len(plain) == 1 and plain != dicom_patients and "plain" not in plain.pop()
    row = next(r for r in dataset["train"] if r["file"].split("/")[-1].startswith("dicom-"))
    assert row["image"].mode == "L" and np.asarray(row["image"]).max() > 200


def test_labels_come_from_the_folder_meaning_not_its_spelling(tmp_path):
    root = tmp_path / "tree"
    names = {0: "0", 1: "grade_1", 2: "Minimal", 3: "3", 4: "severe"}
    for grade, name in names.items():
        write_png(root / "train" / name / f"g{grade}.png", seed=grade)
    convert_to_dataset(root, tmp_path / "ds")
    part = load_grade_dataset(tmp_path / "ds")["train"]
    assert {row["file"].split("/")[-1]: row["label"] for row in part} == {f"g{g}.png": g for g in range(5)}


def test_nested_folders_and_stray_metadata_do_not_drop_labels(tmp_path):
    root = tmp_path / "tree"
    for grade in range(5):
        write_png(root / "train" / f"grade_{grade}" / "a.png", seed=grade)
    write_png(root / "train" / "grade_2" / "batch2" / "b.png", seed=20)
    (root / "train" / "metadata.csv").write_text("file_name,label\na.png,0\n")
    report = convert_to_dataset(root, tmp_path / "ds")
    part = load_grade_dataset(tmp_path / "ds")["train"]
    assert part.num_rows == 6
    assert sorted(part["label"]) == [0, 1, 2, 2, 3, 4]
    shown = {p.code: p.severity for p in report.problems}
    assert shown["nested_folder"] == shown["stray_metadata"] == "warning"  # handled, still visible


def test_unreadable_files_stop_the_conversion_and_write_nothing(tmp_path):
    root = tmp_path / "tree"
    write_png(root / "train" / "grade_0" / "a.png", seed=1)
    (root / "train" / "grade_1" / "bad.png").parent.mkdir(parents=True)
    (root / "train" / "grade_1" / "bad.png").write_bytes(b"")
    (root / "train" / "grade_2" / "text.png").parent.mkdir(parents=True)
    (root / "train" / "grade_2" / "text.png").write_text("hello")
    with pytest.raises(DatasetLayoutError) as caught:
        convert_to_dataset(root, tmp_path / "ds")
    assert "train/grade_1/bad.png" in str(caught.value) and "train/grade_2/text.png" in str(caught.value)
    assert not (tmp_path / "ds").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["tree"]  # no staging left behind


def test_existing_output_is_kept_unless_overwrite(tmp_path, phantom_split):
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "mine.txt").write_text("precious")
    with pytest.raises(FileExistsError, match="--overwrite"):
        convert_to_dataset(phantom_split, tmp_path / "ds")
    assert (tmp_path / "ds" / "mine.txt").read_text() == "precious"
    convert_to_dataset(phantom_split, tmp_path / "ds", overwrite=True)
    assert load_grade_dataset(tmp_path / "ds")["train"].num_rows > 0


def test_a_pool_must_be_split_first(tmp_path, phantom_pool):
    with pytest.raises(DatasetLayoutError, match="spine-hf data split"):
        convert_to_dataset(phantom_pool, tmp_path / "ds")


def test_push_to_hub_is_private_by_default(tmp_path, phantom_split, monkeypatch):
    import datasets

    calls = []
    monkeypatch.setattr(datasets.DatasetDict, "push_to_hub", lambda self, repo, **kw: calls.append((repo, kw, self)))
    convert_to_dataset(phantom_split, tmp_path / "ds", push_to_hub="me/spine")
    repo, kwargs, pushed = calls[0]
    assert repo == "me/spine" and kwargs == {"private": True}
    assert pushed["train"].features["label"].names == list(GRADE_NAMES)


def test_patient_ids_come_from_patients_csv_or_a_regex_as_pseudonyms(tmp_path, phantom_split):
    from spine_hf.data.layout import read_patients

    report = convert_to_dataset(phantom_split, tmp_path / "ds")
    assert report.with_patient == report.images == 30 and report.grouping.endswith("patients.csv")
    dataset = load_grade_dataset(tmp_path / "ds")
    folder = {"train": "train", "validation": "val", "test": "test"}
    known = read_patients(phantom_split)
    same = {}
    for split, part in dataset.items():
        for row in part:
            patient = known[f"{folder[split]}/{row['file']}"]
            assert row["patient"].startswith("patient-") and patient not in row["patient"]
            assert same.setdefault(patient, row["patient"]) == row["patient"]  # one pseudonym per patient
    assert len(set(same.values())) == len(same)  # and one patient per pseudonym
    again = convert_to_dataset(phantom_split, tmp_path / "ds2", group_regex=r"^(ph\d+)_")
    assert again.with_patient == 30 and again.grouping == "--group-regex '^(ph\\d+)_'"
    regrouped = load_grade_dataset(tmp_path / "ds2")["train"]
    assert len(set(regrouped["patient"])) == len({known[f"train/{f}"] for f in regrouped["file"]})
    with pytest.raises(ValueError, match="does not match"):
        convert_to_dataset(phantom_split, tmp_path / "ds3", group_regex=r"^(xx\d+)_")


def test_without_patient_ids_the_column_is_empty_and_a_warning_says_how_to_give_them(tmp_path):
    root = tmp_path / "tree"
    for grade in range(5):
        write_png(root / "train" / f"grade_{grade}" / f"img{grade}.png", seed=grade)
    report = convert_to_dataset(root, tmp_path / "ds")
    assert report.with_patient == 0 and set(load_grade_dataset(tmp_path / "ds")["train"]["patient"]) == {""}
    warning = next(p for p in report.problems if p.code == "no_patient_id")
    assert "--group-regex" in warning.message and warning.severity == "warning"
