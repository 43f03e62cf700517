"""The dataset folder: written from files in shards that read back as the same rows; foreign folders refused."""

from __future__ import annotations

import pytest

from spine_hf.data.convert import convert_to_dataset
from spine_hf.data.dataset_folder import load_grade_dataset


def test_load_grade_dataset_rejects_foreign_datasets(tmp_path):
    import datasets

    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": ["a"]})}).save_to_disk(tmp_path / "x")
    with pytest.raises(ValueError, match="not a spine-hf dataset"):
        load_grade_dataset(tmp_path / "x")


def test_big_splits_are_written_in_shards_that_read_back_as_the_same_rows(tmp_path, phantom_split, monkeypatch):
    import spine_hf.data.dataset_folder

    convert_to_dataset(phantom_split, tmp_path / "one-shard")
    monkeypatch.setattr(spine_hf.data.dataset_folder, "SHARD_BYTES", 10_000)  # a few phantoms per shard
    convert_to_dataset(phantom_split, tmp_path / "shards")
    assert len(list((tmp_path / "shards" / "train").glob("data-*.arrow"))) > 2
    assert len(list((tmp_path / "one-shard" / "train").glob("data-*.arrow"))) == 1
    whole, sharded = load_grade_dataset(tmp_path / "one-shard"), load_grade_dataset(tmp_path / "shards")
    assert whole.keys() == sharded.keys()
    for split in whole:
        assert whole[split].features == sharded[split].features
        assert whole[split]["file"] == sharded[split]["file"] and whole[split]["label"] == sharded[split]["label"]
        raw = type(whole[split].features["image"])(decode=False)
        left = whole[split].cast_column("image", raw)["image"]
        right = sharded[split].cast_column("image", raw)["image"]
        assert [(cell["bytes"], cell["path"]) for cell in left] == [(cell["bytes"], cell["path"]) for cell in right]


def test_shards_never_exceed_the_limit_unless_one_file_does():
    from spine_hf.data.dataset_folder import _shards

    assert _shards([4, 4, 4, 4], 8) == [(0, 2), (2, 4)]
    assert _shards([3, 20, 3, 3], 8) == [(0, 1), (1, 2), (2, 4)]
    assert _shards([5], 1) == [(0, 1)]


def test_a_folder_of_images_is_pointed_to_convert(phantom_split):
    with pytest.raises(ValueError, match="run `spine-hf data convert"):
        load_grade_dataset(phantom_split)
