"""Full-spine AP phantoms: tall films whose grade is the band of the Cobb angle a reader measured on the curve drawn."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from spine_hf.data.imaging import decode
from spine_hf.data.layout import read_patients, scan
from spine_hf.data.phantoms import make_phantoms
from spine_hf.data.phantoms_ap import READER_SD, cobb_grade


@pytest.fixture(scope="module")
def ap_films(tmp_path_factory):
    out = tmp_path_factory.mktemp("ap") / "pool"
    report = make_phantoms(out, per_grade=4, seed=3, size=256, share_16bit=0.5, view="ap")
    with (out / "patients.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    return out, report, rows


def test_ap_films_are_tall_16_bit_for_a_share_and_graded_by_the_band_of_their_read_cobb_angle(ap_films):
    out, report, rows = ap_films
    assert report.counts == [4] * 5 and len(rows) == 20 and 0 < report.sixteen_bit < 20
    assert scan(out).kind == "pool" and len(read_patients(out)) == 20
    near_cut_off = 0
    for row in rows:
        grade = int(row["file"].split("/")[0].removeprefix("grade_"))
        drawn, read = float(row["cobb_drawn"]), float(row["cobb_read"])
        assert cobb_grade(read) == grade  # the label is the band of the angle a reader measured
        assert abs(read - drawn) < 4 * READER_SD  # a reader's error, not another film
        near_cut_off += cobb_grade(drawn) != grade
        decoded = decode(out / row["file"])
        width, height = decoded.image.size
        assert height == 256 and 2.2 <= height / width <= 3.0 + 0.1
    assert near_cut_off < len(rows) / 2  # most films are drawn in their grade's band
    assert [cobb_grade(a) for a in (0, 9.9, 10, 19.9, 20, 30, 44.9, 45, 80)] == [0, 0, 1, 1, 2, 3, 3, 4, 4]


def test_a_severe_curve_deviates_visibly_more_than_a_healthy_spine(ap_films):
    """On the pixels, not the recorded angles: the column where the spine is brightest wanders across the film
    much further on grade-4 films than on grade-0 films."""
    from scipy.ndimage import uniform_filter

    out, _, rows = ap_films

    def wander(file: str) -> float:
        pixels = np.asarray(decode(out / file).image, dtype=np.float64)
        height, width = pixels.shape
        smooth = uniform_filter(pixels, size=(height // 40, max(3, width // 25)))
        columns = smooth[int(0.15 * height) : int(0.7 * height)].argmax(axis=1)  # C7 to the lumbar spine
        return float(columns.max() - columns.min()) / width

    healthy = [wander(r["file"]) for r in rows if r["file"].startswith("grade_0/")]
    severe = [wander(r["file"]) for r in rows if r["file"].startswith("grade_4/")]
    assert min(severe) > max(healthy) and np.mean(severe) > 1.5 * np.mean(healthy)
