"""Phantoms: deterministic, labelled by patient, 16-bit for a share, grade drives the anatomy."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from PIL import Image

from spine_hf.data.imaging import decode
from spine_hf.data.layout import read_patients, scan
from spine_hf.data.phantoms import DESCRIPTION, _sample_anatomy, make_phantoms


def _digests(root):
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*.png")}


def test_same_seed_same_files_other_seed_other_files(tmp_path):
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        make_phantoms(tmp_path / name, per_grade=3, seed=seed, size=48)
    assert _digests(tmp_path / "a") == _digests(tmp_path / "b")
    assert _digests(tmp_path / "a") != _digests(tmp_path / "c")


def test_layout_patients_and_bit_depths(tmp_path):
    report = make_phantoms(tmp_path / "p", per_grade=8, seed=1, size=48, share_16bit=0.5)
    layout = scan(tmp_path / "p")
    assert layout.kind == "pool" and report.counts == [8] * 5
    patients = read_patients(tmp_path / "p")
    assert sorted(patients) == sorted(entry.rel for entry in layout.images)
    assert report.patients == len(set(patients.values())) < 40  # some patients have two views
    modes = {decode(entry.path).mode for entry in layout.images}
    assert modes == {"L", "I;16"}
    assert 0 < report.sixteen_bit < 40
    with Image.open(layout.images[0].path) as image:
        assert image.info["Description"] == DESCRIPTION  # marked as synthetic in the file itself
    none_deep = make_phantoms(tmp_path / "q", per_grade=2, seed=1, size=48, share_16bit=0.0)
    assert none_deep.sixteen_bit == 0


def test_grade_drives_narrowing_osteophytes_and_sclerosis_with_overlap():
    features = {grade: [] for grade in range(5)}
    for grade in range(5):
        for i in range(200):
            anatomy = _sample_anatomy(np.random.default_rng([grade, i]), grade)
            features[grade].append((anatomy["disc"].mean(), anatomy["osteophyte"].mean(), anatomy["sclerosis"].mean()))
    means = np.array([np.mean(features[g], axis=0) for g in range(5)])
    assert np.all(np.diff(means[:, 0]) < 0)  # discs narrow
    assert np.all(np.diff(means[:, 1]) > 0)  # osteophytes grow
    assert np.all(np.diff(means[:, 2]) > 0)  # sclerosis grows
    for grade in range(4):  # neighbouring grades overlap a little, not completely
        lower = np.array(features[grade])[:, 0]
        upper = np.array(features[grade + 1])[:, 0]
        overlap = np.mean(upper > np.percentile(lower, 10))  # measured: 7-9 % of the next grade
        assert 0.02 < overlap < 0.3


def test_refuses_a_folder_that_holds_files(tmp_path):
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError):
        make_phantoms(tmp_path / "p", per_grade=1)
