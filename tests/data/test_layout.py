"""Reading a folder tree and creating the layout: `init_dataset`, `scan`."""

from __future__ import annotations

from spine_hf.data.layout import init_dataset, scan


def test_init_creates_the_layout_and_is_idempotent(tmp_path):
    created = init_dataset(tmp_path / "ds")
    assert len(created) == 15
    assert (tmp_path / "ds" / "val" / "grade_4").is_dir()
    assert init_dataset(tmp_path / "ds") == []
    assert scan(tmp_path / "ds").kind == "splits"
