"""The decoded cache: built once, mapped by every later reader and process, rebuilt when stale or damaged."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO

import spine_hf.training.decoded_cache as decoded_cache
from spine_hf.data.convert import convert_to_dataset
from spine_hf.data.dataset_folder import load_grade_dataset
from spine_hf.data.imaging import decode_image
from spine_hf.models.preprocessing import square


@pytest.fixture
def dataset(tmp_path, phantom_split) -> Path:
    convert_to_dataset(phantom_split, tmp_path / "ds")
    return tmp_path / "ds"


@pytest.fixture
def decodes(tmp_path, monkeypatch) -> Path:
    """Counts calls of the decoder by the cache builder, in this process and in its forked workers."""
    tally = tmp_path / "decodes.txt"
    real = decoded_cache.decode_cell  # the decoder, for one stored image

    def counted(source):
        with open(tally, "a") as handle:  # appends from several processes stay whole lines
            handle.write("x\n")
        return real(source)

    monkeypatch.setattr(decoded_cache, "decode_cell", counted)
    return tally


def _count(tally: Path) -> int:
    return len(tally.read_text().splitlines()) if tally.exists() else 0


def test_built_once_then_mapped_without_decoding(dataset, decodes):
    split = load_grade_dataset(dataset)["train"]
    first = decoded_cache.open_decoded(split, 40, dataset / "squares")
    assert first.decoded == len(split) == _count(decodes)
    assert first.path.parent == dataset / "squares" and first.path.name.startswith("train-40px-")
    for index in (0, len(split) - 1):
        cell = split.cast_column("image", type(split.features["image"])(decode=False))[index]["image"]
        np.testing.assert_array_equal(first.squares[index], square(decode_image(cell["bytes"]), 40))
    again = decoded_cache.open_decoded(split, 40, dataset / "squares")
    assert again.decoded == 0 and _count(decodes) == len(split)  # a second reader decodes nothing
    assert again.path == first.path and not again.squares.flags.writeable
    np.testing.assert_array_equal(again.squares, first.squares)
    assert [p.name for p in (dataset / "squares").iterdir()] == [first.path.name]  # no temporary file left


def test_another_side_or_other_rows_get_their_own_cache(dataset, decodes):
    split = load_grade_dataset(dataset)["train"]
    base = decoded_cache.open_decoded(split, 40, dataset / "squares")
    wider = decoded_cache.open_decoded(split, 48, dataset / "squares")
    fewer = decoded_cache.open_decoded(split.select(range(5)), 40, dataset / "squares")
    assert len({base.path, wider.path, fewer.path}) == 3
    assert wider.squares.shape == (len(split), 48, 48) and fewer.squares.shape == (5, 40, 40)
    assert wider.decoded == len(split) and fewer.decoded == 5
    np.testing.assert_array_equal(fewer.squares, base.squares[:5])


def test_a_converted_again_split_never_reads_the_old_cache(tmp_path, phantom_split, phantom_pool):
    convert_to_dataset(phantom_split, tmp_path / "a")
    old = decoded_cache.open_decoded(load_grade_dataset(tmp_path / "a")["train"], 40, tmp_path / "shared")
    # Other content under the same split name, written to the same cache folder.
    from spine_hf.data.split import split_dataset

    split_dataset(phantom_pool, tmp_path / "other", ratios=(0.3, 0.7, 0.0), seed=9)
    convert_to_dataset(tmp_path / "other", tmp_path / "b")
    new = decoded_cache.open_decoded(load_grade_dataset(tmp_path / "b")["train"], 40, tmp_path / "shared")
    assert new.path != old.path and new.decoded == new.squares.shape[0]


def test_a_truncated_or_foreign_cache_is_rebuilt(dataset, decodes, caplog):
    split = load_grade_dataset(dataset)["train"]
    first = decoded_cache.open_decoded(split, 40, dataset / "squares")
    expected = np.array(first.squares)
    del first
    path = decoded_cache.cache_file(split, 40, dataset / "squares")
    with open(path, "r+b") as handle:  # a copy cut short, as a full disk or a killed copy leaves it
        handle.truncate(path.stat().st_size - 1000)
    rebuilt = decoded_cache.open_decoded(split, 40, dataset / "squares")
    assert rebuilt.decoded == len(split) and "damaged" in caplog.text
    np.testing.assert_array_equal(rebuilt.squares, expected)
    del rebuilt
    np.save(path, np.zeros((3, 40, 40), dtype=np.uint8))  # a valid .npy, but not this split's
    assert decoded_cache.open_decoded(split, 40, dataset / "squares").decoded == len(split)
    assert _count(decodes) == 3 * len(split)


def test_rows_that_cannot_be_decoded_are_all_listed_and_no_cache_is_left(tmp_path):
    import datasets

    from spine_hf.data.dataset_folder import dataset_features

    text = (REPO / "README.md").read_bytes()  # bytes that are not an image
    rows = {"image": [{"bytes": b"not an image", "path": "a.png"}, {"bytes": text, "path": "b.png"}],
            "label": [0, 1], "file": ["a.png", "b.png"], "patient": ["", ""]}  # fmt: skip
    split = datasets.Dataset.from_dict(rows, features=dataset_features())
    with pytest.raises(ValueError, match=r"(?s)2 images .*row 0 \(a\.png\).*row 1 \(b\.png\)"):
        decoded_cache.open_decoded(split, 16, tmp_path / "squares")
    assert list((tmp_path / "squares").iterdir()) == []


@pytest.mark.slow
def test_two_training_processes_build_each_cache_once_and_a_second_run_decodes_nothing(tmp_path, dataset):
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "ACCELERATE_USE_CPU": "1"}

    def train(out: Path) -> str:
        args = ["--config_path", str(REPO / "configs" / "quickstart.yaml"), f"--data.dataset={dataset}",
                f"--train.output_dir={out}", "--model.image_size=64", "--train.batch_size=8", "--train.epochs=1",
                "--train.threads=1"]  # fmt: skip
        run = subprocess.run([*launcher, "-m", "spine_hf.train", *args], capture_output=True, text=True, env=env,
                             timeout=600)  # fmt: skip
        assert run.returncode == 0, run.stderr[-3000:]
        return run.stderr

    first = train(tmp_path / "one")
    decoded = re.findall(r"decoded \d+ images into (\S+)", first)
    mapped = re.findall(r"mapped \d+ decoded images from (\S+)", first)
    # train (74 px), validation and test (64 px): three caches, each decoded by one process, mapped by the other
    assert len(decoded) == len(set(decoded)) == 3 and sorted(mapped) == sorted(decoded)
    second = train(tmp_path / "two")
    assert not re.findall(r"decoded \d+ images into", second)
    assert len(re.findall(r"mapped \d+ decoded images", second)) == 6
