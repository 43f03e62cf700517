"""map_cpu: decoding spread over processes keeps order, carries decode errors whole, and convert/verify
give the same answers through it as one file at a time."""

from __future__ import annotations

import io
import os
import pickle

import numpy as np
import pytest
from factories import write_png
from PIL import Image

from spine_hf.data import parallel
from spine_hf.data.convert import convert_to_dataset
from spine_hf.data.dataset_folder import load_grade_dataset
from spine_hf.data.imaging import ImageDecodeError, decode, decode_image
from spine_hf.data.layout import DatasetLayoutError
from spine_hf.data.parallel import MIN_ITEMS_FOR_PROCESSES, map_cpu
from spine_hf.data.verify import verify_dataset


def _pid_and_square(value: int) -> tuple[int, int]:
    return os.getpid(), value * value


def _decode_or_error(data: bytes):
    try:
        return decode(data).image.size
    except ImageDecodeError as err:
        return err


def test_many_items_go_to_forked_processes_in_order():
    count = MIN_ITEMS_FOR_PROCESSES + 36
    results = map_cpu(_pid_and_square, range(count), workers=2)
    assert [square for _, square in results] == [v * v for v in range(count)]
    pids = {pid for pid, _ in results}
    assert os.getpid() not in pids  # the work ran in worker processes, not here


def test_few_items_or_one_worker_stay_in_this_process():
    assert {pid for pid, _ in map_cpu(_pid_and_square, range(5), workers=2)} == {os.getpid()}
    assert {pid for pid, _ in map_cpu(_pid_and_square, range(100), workers=1)} == {os.getpid()}
    assert map_cpu(_pid_and_square, [], workers=2) == []


def test_several_argument_lists_are_zipped():
    assert map_cpu(pow, range(100), [2] * 100, workers=2) == [v**2 for v in range(100)]


def test_without_fork_threads_do_the_work(monkeypatch):
    monkeypatch.setattr(parallel.multiprocessing, "get_all_start_methods", lambda: ["spawn"])
    results = map_cpu(_pid_and_square, range(100), workers=2)
    assert {pid for pid, _ in results} == {os.getpid()} and results[7] == (os.getpid(), 49)


def test_decode_errors_cross_the_process_boundary_whole():
    err = ImageDecodeError("a\udce9.png", "corrupt", "is  damaged\nbadly", "Re-export it.")
    back = pickle.loads(pickle.dumps(err))
    assert (back.name, back.kind, back.problem, back.fix) == (err.name, err.kind, err.problem, err.fix)
    assert str(back) == str(err) == "a\\xe9.png: is damaged badly. Re-export it."  # one line, as reports print it
    good = io.BytesIO()
    Image.new("L", (9, 7)).save(good, format="PNG")
    blobs = [good.getvalue(), b"not an image"] * 40
    results = map_cpu(_decode_or_error, blobs, workers=2)
    assert results[0::2] == [(9, 7)] * 40
    assert all(isinstance(r, ImageDecodeError) and r.kind == "not_image" for r in results[1::2])


@pytest.fixture
def big_tree(tmp_path):
    """A split tree with more images than MIN_ITEMS_FOR_PROCESSES, so convert and verify use processes."""
    root = tmp_path / "tree"
    for index in range(MIN_ITEMS_FOR_PROCESSES + 16):
        split = "train" if index % 4 else "val"
        write_png(root / split / f"grade_{index % 5}" / f"p{index:03d}.png", seed=index, size=24)
    return root


def test_convert_through_processes_keeps_every_row_and_pixel(tmp_path, big_tree):
    report = convert_to_dataset(big_tree, tmp_path / "ds", workers=2)
    dataset = load_grade_dataset(tmp_path / "ds")
    assert report.images == sum(part.num_rows for part in dataset.values()) == MIN_ITEMS_FOR_PROCESSES + 16
    for split, folder in (("train", "train"), ("validation", "val")):
        for row in dataset[split]:
            source = big_tree / folder / row["file"]
            assert int(row["file"][6]) == row["label"]
            np.testing.assert_array_equal(np.asarray(row["image"]), np.asarray(decode_image(source)))


def test_convert_through_processes_names_every_bad_file(tmp_path, big_tree):
    (big_tree / "train" / "grade_1" / "zero.png").write_bytes(b"")
    whole = (big_tree / "val" / "grade_0" / "p000.png").read_bytes()
    (big_tree / "val" / "grade_3" / "trunc.png").write_bytes(whole[:60])
    with pytest.raises(DatasetLayoutError) as caught:
        convert_to_dataset(big_tree, tmp_path / "ds", workers=2)
    assert "train/grade_1/zero.png" in str(caught.value) and "val/grade_3/trunc.png" in str(caught.value)
    assert not (tmp_path / "ds").exists()


def test_verify_through_processes_matches_one_worker(big_tree):
    (big_tree / "train" / "grade_2" / "zero.png").write_bytes(b"")
    together = verify_dataset(big_tree, workers=2)
    alone = verify_dataset(big_tree, workers=1)
    assert [(p.severity, p.code, p.path) for p in together.problems] == [
        (p.severity, p.code, p.path) for p in alone.problems
    ]
    assert any(p.path == "train/grade_2/zero.png" and p.code == "empty" for p in together.problems)
