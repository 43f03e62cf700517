"""Image shapes of a dataset: what convert records, when a split mixes kinds of film, the shape with an aspect."""

from __future__ import annotations

from spine_hf.data.shapes import SIZES_FILE, mixed_aspect, read_sizes, shape_for, summarise, write_sizes


def test_a_summary_holds_each_splits_aspects_and_sizes_and_round_trips(tmp_path):
    sizes = [(2400, 900), (2600, 1000), (2200, 880)]
    summary = write_sizes(tmp_path, {"train": sizes, "test": []})
    assert (tmp_path / SIZES_FILE).is_file() and read_sizes(tmp_path) == summary and list(summary) == ["train"]
    train = summary["train"]
    assert train["images"] == 3 and train["aspect"]["median"] == round(2600 / 1000, 3)
    assert train["aspect"]["min"] == 2.5 and train["height"] == {"median": 2400, "min": 2200, "max": 2600}
    assert read_sizes(tmp_path / "nowhere") is None


def test_ap_and_lateral_films_in_one_split_are_called_mixed_and_one_kind_is_not():
    ap = [(2600, 1000 + 10 * i) for i in range(20)]
    lateral = [(1300, 1000 + 10 * i) for i in range(20)]
    assert mixed_aspect(summarise(ap)) is None and mixed_aspect(summarise(lateral)) is None
    message = mixed_aspect(summarise(ap + lateral))
    assert message and "AP and lateral" in message and "from 1.11 to 2.55" in message


def test_the_shape_keeps_the_aspect_at_about_the_pixels_in_steps():
    assert shape_for(128, 2.6, 16) == (208, 80)  # a full-spine AP film's aspect at 128^2 pixels
    assert shape_for(128, 1.0, 16) == (128, 128) and shape_for(224, 1.0, 32) == (224, 224)
    assert shape_for(40, 2.6, 16) == (80, 32)  # tiny: the steps decide, the aspect wins over the pixels
    for side, aspect, step in ((320, 2.6, 16), (512, 1.4, 32), (256, 3.0, 16)):
        height, width = shape_for(side, aspect, step)
        assert height % step == 0 and width % step == 0 and width >= step
        assert abs(height / width / aspect - 1) < 0.25 and abs(height * width / side**2 - 1) < 0.3
