"""DICOM de-identification: no attribute of the PS3.15 basic profile reaches a dataset, a model, a log or the Hub.

Every identifying attribute of the basic profile (PS3.15 Annex E, Table E.1-1) that a plain
radiograph may carry is filled with a unique marker; the files then go through verify, convert,
train, evaluate, predict and push, and every file those write and everything they print is searched
for every marker.
"""

from __future__ import annotations

import json

import numpy as np
from factories import fake_hf_api, write_dicom, write_png

from spine_hf.cli import main

UID_ROOT = "1.2.826.0.1.3680043.9.7734."
# Text attributes of the basic profile: each gets its own marker.
TEXT_ATTRIBUTES = [
    "AccessionNumber", "AdditionalPatientHistory", "AdmittingDiagnosesDescription", "DerivationDescription",
    "DeviceSerialNumber", "ImageComments", "InstitutionAddress", "InstitutionName", "InstitutionalDepartmentName",
    "IssuerOfPatientID", "MedicalRecordLocator", "OperatorsName", "OtherPatientIDs", "OtherPatientNames",
    "PatientAddress", "PatientBirthName", "PatientComments", "PatientID", "PatientMotherBirthName", "PatientName",
    "PatientTelephoneNumbers", "PerformingPhysicianName", "PhysiciansOfRecord", "ReferringPhysicianName",
    "RequestingPhysician", "SeriesDescription", "StationName", "StudyDescription", "StudyID", "ProtocolName",
    "RequestedProcedureDescription", "PerformedProcedureStepDescription", "Occupation", "EthnicGroup",
]  # fmt: skip
DATE_ATTRIBUTES = ["PatientBirthDate", "StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate"]
TIME_ATTRIBUTES = ["StudyTime", "SeriesTime", "AcquisitionTime", "ContentTime", "PatientBirthTime"]
UID_ATTRIBUTES = ["StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"]


def _identified_tags(index: int) -> tuple[dict, list[str]]:
    """(tags to write, markers to search for) for the index-th file."""
    tags: dict = {}
    markers = []
    for attribute in TEXT_ATTRIBUTES:
        value = f"ZQ{index}{attribute[:10]}"
        tags[attribute] = value[:16] if attribute in ("AccessionNumber", "StudyID", "DeviceSerialNumber") else value
        markers.append(tags[attribute])
    for offset, attribute in enumerate(DATE_ATTRIBUTES):
        tags[attribute] = f"1931{index % 10 + 1:02d}{offset + 11:02d}"
        markers.append(tags[attribute])
    for offset, attribute in enumerate(TIME_ATTRIBUTES):
        tags[attribute] = f"07{offset + 10:02d}{index % 50 + 10:02d}.271828"
        markers.append(tags[attribute])
    for offset, attribute in enumerate(UID_ATTRIBUTES):
        tags[attribute] = f"{UID_ROOT}{index}.{offset}"
        markers.append(tags[attribute])
    tags.update(PatientAge="066Y", PatientSex="F", PatientSize="1.72", PatientWeight="81.5")
    return tags, markers


def _write_identified(path, index: int, burned_in: bool = False) -> list[str]:
    import pydicom

    tags, markers = _identified_tags(index)
    rng = np.random.default_rng(index)
    pixels = rng.integers(0, 4096, (48, 48)).astype(np.uint16)
    if burned_in:
        tags["BurnedInAnnotation"] = "YES"
    write_dicom(path, pixels, BitsStored=12, **tags)
    ds = pydicom.dcmread(path)
    block = ds.private_block(0x0041, "ACME HOSPITAL PACS", create=True)
    private = f"ZQ{index}PrivateNote"
    block.add_new(0x10, "LO", private)
    ds.SOPInstanceUID = f"{UID_ROOT}{index}.9"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(path)
    return [*markers, private, ds.SOPInstanceUID]


def test_no_basic_profile_attribute_reaches_any_output(tmp_path, capsys, caplog, monkeypatch):
    import huggingface_hub

    caplog.set_level("DEBUG")
    tree = tmp_path / "tree"
    markers: list[str] = []
    dicoms = []
    index = 0
    for split in ("train", "val", "test"):
        for grade in range(5):
            index += 1
            path = tree / split / f"grade_{grade}" / f"scan{index}.dcm"
            markers += _write_identified(path, index, burned_in=index == 1)
            dicoms.append(path)
            write_png(tree / split / f"grade_{grade}" / f"plain{index}.png", seed=index)
    for marker in markers[:3]:  # the markers really are in the sources
        assert marker.encode() in dicoms[0].read_bytes()

    assert main(["data", "verify", str(tree), "--json", str(tmp_path / "verify.json")]) == 0
    assert "burned_in_text" in capsys.readouterr().out  # the pixels may carry what the header no longer does
    assert main(["data", "convert", str(tree), str(tmp_path / "ds")]) == 0
    train = ["train", "--config_path", "configs/quickstart.yaml", f"--data.dataset={tmp_path / 'ds'}",
             f"--train.output_dir={tmp_path / 'run'}", "--model.image_size=32", "--train.epochs=1",
             "--train.batch_size=8", "--train.ema_decay=0"]  # fmt: skip
    assert main(train) == 0
    best = tmp_path / "run" / "best"
    assert main(["evaluate", "--model", str(best), "--data", str(tmp_path / "ds"), "--out", str(tmp_path / "eval"),
                 "--bootstrap", "10"]) == 0  # fmt: skip
    assert main(["predict", "--model", str(best), *map(str, dicoms)]) == 0
    fake_api, calls = fake_hf_api()
    monkeypatch.setattr(huggingface_hub, "HfApi", fake_api)
    assert main(["push", "--model", str(best), "--repo-id", "me/spine"]) == 0
    uploaded = calls[-1][1]["folder_path"]
    printed = capsys.readouterr()
    text = printed.out + printed.err + caplog.text
    predictions = [json.loads(line) for line in printed.out.splitlines() if line.startswith('{"file"')]
    assert len(predictions) == len(dicoms)

    written = [
        path
        for folder in (tmp_path / "ds", tmp_path / "run", tmp_path / "eval", tmp_path / uploaded)
        for path in folder.rglob("*")
        if path.is_file()
    ]
    assert len(written) > 20
    found = [(marker, str(path)) for path in written for marker in markers if marker.encode() in path.read_bytes()]
    found += [(marker, "printed output or log") for marker in markers if marker in text]
    assert found == []
