"""The bad-input corpus through every command that takes files.

Each case either works (the image is graded like any other) or fails with a message that names the
file and says how to fix it: never a traceback, a hang or a silently dropped image or label.
Source files are never changed.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from badinputs import CASE_IDS, FILE_CASES, FileCase, good_tree
from factories import write_png

from spine_hf.cli import main
from spine_hf.data.imaging import ImageDecodeError, decode, display_path

ERROR_CASES = [case for case in FILE_CASES if case.outcome == "error"]
LINK_FIX = "replace it with the image file"


def _fix(path: Path) -> str:
    """The fix the project gives for `path` when it reads it itself."""
    try:
        decode(path)
    except ImageDecodeError as err:
        return err.fix
    raise AssertionError(f"{path} decodes")


def _layout_fix(path: Path) -> str:
    """The fix given where a folder is scanned first (links that lead nowhere are caught there)."""
    return LINK_FIX if path.is_symlink() and not path.exists() else _fix(path)


def _digests(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): "link" if p.is_symlink() else hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() or p.is_symlink()
    }


def _bad_in_tree(tmp_path: Path, case: FileCase) -> tuple[Path, Path]:
    tree = good_tree(tmp_path / "tree")
    return tree, case.make(tree / "train" / "grade_2", 7)


@pytest.mark.parametrize("case", FILE_CASES, ids=CASE_IDS)
def test_verify(case, tmp_path, capsys):
    tree, bad = _bad_in_tree(tmp_path, case)
    code = main(["data", "verify", str(tree)])
    out = capsys.readouterr().out
    if case.outcome == "works":
        assert code == 0, out
        assert "OK: 16 readable images" in out
    else:
        assert code == 1
        line = next(line for line in out.splitlines() if line.startswith("ERROR"))
        assert f"train/grade_2/{display_path(bad.name)}" in line and _layout_fix(bad) in line


@pytest.mark.parametrize("case", FILE_CASES, ids=CASE_IDS)
def test_convert(case, tmp_path, capsys):
    from spine_hf.data.dataset_folder import load_grade_dataset

    tree, bad = _bad_in_tree(tmp_path, case)
    before = _digests(tree)
    code = main(["data", "convert", str(tree), str(tmp_path / "ds")])
    captured = capsys.readouterr()
    assert _digests(tree) == before
    if case.outcome == "works":
        assert code == 0, captured.err
        train = load_grade_dataset(tmp_path / "ds")["train"]
        assert sorted(train["label"]) == [0, 1, 2, 2, 3, 4]
        assert f"grade_2/{display_path(bad.name)}" in train["file"]
    else:
        assert code == 1
        assert f"train/grade_2/{display_path(bad.name)}" in captured.err and _layout_fix(bad) in captured.err
        assert sorted(p.name for p in tmp_path.iterdir()) == ["tree"]  # no dataset, no leftovers


@pytest.mark.parametrize("case", FILE_CASES, ids=CASE_IDS)
def test_organize(case, tmp_path, capsys):
    raw = tmp_path / "raw"
    for grade in range(5):
        write_png(raw / f"ok{grade}.png", seed=grade)
    bad = case.make(raw, 7)
    labels = tmp_path / "labels.csv"
    # The CSV names the file with the same bytes as the disk does (Latin-1 for the non-UTF-8 case).
    rows = b"file,grade,patient_id\n" + os.fsencode(bad.name) + b",2,p9\n"
    labels.write_bytes(rows + b"".join(f"ok{g}.png,{g},p{g}\n".encode() for g in range(5)))
    before = _digests(raw)
    code = main(["data", "organize", "--images", str(raw), "--labels", str(labels), "--out", str(tmp_path / "pool")])
    out = capsys.readouterr().out
    assert _digests(raw) == before
    pool = _digests(tmp_path / "pool")
    assert all(pool[f"grade_{g}/ok{g}.png"] == before[f"ok{g}.png"] for g in range(5))
    if bad.is_symlink() and not bad.exists():
        assert code == 1
        assert f"labels.csv:2: {bad.name} is a link that leads nowhere" in out and LINK_FIX in out
        assert len(pool) == 6  # five images and patients.csv
        return
    assert code == 0, out
    assert pool[f"grade_2/{bad.name}"] == before[bad.name]  # placed byte for byte, whatever it holds
    if case.outcome == "error":
        line = next(line for line in out.splitlines() if f"grade_2/{display_path(bad.name)}" in line)
        assert line.startswith("WARNING") and _fix(bad) in line


def test_a_utf8_csv_finds_a_file_whose_name_on_disk_is_latin1(tmp_path):
    from spine_hf.data.organize import organize

    raw = tmp_path / "raw"
    bad = FILE_CASES[CASE_IDS.index("non-UTF-8 name")].make(raw, 1)
    (tmp_path / "labels.csv").write_text("file,grade\n\u00e9t\u00e9.png,3\n", encoding="utf-8")
    report = organize(raw, tmp_path / "labels.csv", tmp_path / "pool")
    assert not report.errors and report.placed == [0, 0, 0, 1, 0]
    assert (tmp_path / "pool" / "grade_3" / bad.name).read_bytes() == bad.read_bytes()


@pytest.mark.parametrize("case", FILE_CASES, ids=CASE_IDS)
def test_split(case, tmp_path, capsys):
    pool = tmp_path / "pool"
    for grade in range(5):
        for index in range(3):
            write_png(pool / f"grade_{grade}" / f"p{grade}{index}.png", seed=10 * grade + index)
    bad = case.make(pool / "grade_2", 7)
    before = _digests(pool)
    code = main(["data", "split", str(pool), str(tmp_path / "out"), "--seed", "1"])
    out = capsys.readouterr()
    assert _digests(pool) == before
    if bad.is_symlink() and not bad.exists():
        assert code == 1
        assert f"grade_2/{bad.name}" in out.err and LINK_FIX in out.err
        assert not (tmp_path / "out").exists()
        return
    assert code == 0, out.err
    placed = _digests(tmp_path / "out")
    assert sorted(placed.values()) == sorted(before.values())  # every file once, byte for byte
    where = [rel for rel in placed if rel.endswith(f"/grade_2/{bad.name}")]
    assert len(where) == 1
    if case.outcome == "error":
        line = next(line for line in out.out.splitlines() if display_path(bad.name) in line)
        assert line.startswith("WARNING") and _fix(bad) in line


def test_predict(trained_model, tmp_path, capsys):
    files = [case.make(tmp_path / f"case{index}", index) for index, case in enumerate(FILE_CASES)]
    code = main(["predict", "--model", str(trained_model), *map(str, files)])
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == 1  # some files failed
    assert [record["file"] for record in records] == [display_path(path) for path in files]
    for case, path, record in zip(FILE_CASES, files, records, strict=True):
        if case.outcome == "works":
            assert record["grade"] in range(5) and sum(record["probabilities"]) == pytest.approx(1, abs=1e-4)
        else:
            assert record["error"].startswith(display_path(path)) and _fix(path) in record["error"], case.name


@pytest.mark.parametrize("case", [c for c in FILE_CASES if c.name != "symlink loop"], ids=lambda c: c.name)
def test_app(case, running_app, trained_model, tmp_path):
    """Uploads through the running server (a browser cannot upload a symlink, so that case is not here)."""
    from gradio_client import Client, handle_file

    path = case.make(tmp_path, 3)
    if case.name == "non-UTF-8 name":  # a browser sends UTF-8 names; the bytes still arrive intact
        path = path.rename(path.with_name("\u00e9t\u00e9.png"))
    client = Client(running_app, verbose=False)
    if case.outcome == "works":
        headline, label, _ = client.predict(handle_file(str(path)), False, str(trained_model), api_name="/grade")
        assert headline.startswith("## Grade ") and len(label["confidences"]) == 5
    else:
        with pytest.raises(Exception) as caught:
            client.predict(handle_file(str(path)), False, str(trained_model), api_name="/grade")
        assert path.name in str(caught.value) and _fix(path) in str(caught.value)


def test_train_and_evaluate_take_every_working_case(tmp_path, capsys):
    from spine_hf.data.dataset_folder import load_grade_dataset

    tree = good_tree(tmp_path / "tree", per_grade=2)
    works = [case for case in FILE_CASES if case.outcome == "works"]
    for index, case in enumerate(works):
        for split in ("train", "test"):
            case.make(tree / split / f"grade_{index % 5}", index)
    assert main(["data", "convert", str(tree), str(tmp_path / "ds")]) == 0
    test_rows = load_grade_dataset(tmp_path / "ds")["test"].num_rows
    assert test_rows == 10 + len(works)
    args = ["train", "--config_path", "configs/quickstart.yaml", f"--data.dataset={tmp_path / 'ds'}",
            f"--train.output_dir={tmp_path / 'run'}", "--model.image_size=32", "--train.epochs=1",
            "--train.batch_size=8", "--train.ema_decay=0"]  # fmt: skip
    assert main(args) == 0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["test"]["count"] == test_rows
    assert main(["evaluate", "--model", str(tmp_path / "run" / "best"), "--data", str(tmp_path / "ds"),
                 "--out", str(tmp_path / "eval"), "--bootstrap", "20"]) == 0  # fmt: skip
    lines = (tmp_path / "eval" / "predictions.csv").read_text().splitlines()
    assert len(lines) == 1 + test_rows
    assert any("\\xe9t\\xe9.png" in line for line in lines)  # the non-UTF-8 name, readable and unambiguous
    capsys.readouterr()


def test_train_and_evaluate_name_the_rows_of_a_foreign_dataset_that_cannot_be_decoded(tmp_path, trained_model, capsys):
    """A DatasetDict built without `convert` (e.g. from the Hub) can hold broken images."""
    import datasets

    from spine_hf.data.dataset_folder import dataset_features

    good = (write_png(tmp_path / "g.png", seed=1)).read_bytes()
    rows = {"image": [{"bytes": good, "path": f"ok{i}.png"} for i in range(5)], "label": list(range(5))}
    rows["image"][3] = {"bytes": b"\x89PNG\r\n\x1a\n broken", "path": "broken.png"}
    features = datasets.Features({"image": dataset_features()["image"], "label": dataset_features()["label"]})
    split = datasets.Dataset.from_dict(rows, features=features)
    datasets.DatasetDict({"train": split, "validation": split, "test": split}).save_to_disk(str(tmp_path / "ds"))
    args = ["train", "--config_path", "configs/quickstart.yaml", f"--data.dataset={tmp_path / 'ds'}",
            f"--train.output_dir={tmp_path / 'run'}", "--model.image_size=32", "--train.epochs=1"]  # fmt: skip
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "row 3 (broken.png)" in err and "spine-hf data convert" in err and "Traceback" not in err
    assert main(["evaluate", "--model", str(trained_model), "--data", str(tmp_path / "ds"),
                 "--out", str(tmp_path / "eval")]) == 1  # fmt: skip
    err = capsys.readouterr().err
    assert "row 3 (broken.png)" in err and "spine-hf data convert" in err
    assert not (tmp_path / "eval").exists()


def test_train_and_evaluate_point_an_image_folder_to_convert(tmp_path, trained_model, capsys):
    tree = good_tree(tmp_path / "tree")
    args = ["train", "--config_path", "configs/quickstart.yaml", f"--data.dataset={tree}",
            f"--train.output_dir={tmp_path / 'run'}"]  # fmt: skip
    assert main(args) == 1
    assert f"spine-hf data convert {tree} OUT" in capsys.readouterr().err
    code = main(["evaluate", "--model", str(trained_model), "--data", str(tree), "--out", str(tmp_path / "e")])
    assert code == 1
    assert f"spine-hf data convert {tree} OUT" in capsys.readouterr().err


# ------------------------------------------------------------------------------ damaged folders


def _empty_grade(tree: Path) -> None:
    for path in (tree / "train" / "grade_3").iterdir():
        path.unlink()


def _unknown_folder(tree: Path) -> None:
    write_png(tree / "train" / "unsure" / "u.png", seed=500)


def _nested_folder(tree: Path) -> None:
    write_png(tree / "train" / "grade_2" / "batch2" / "n.png", seed=501)


def _stray_metadata(tree: Path) -> None:
    (tree / "train" / "metadata.csv").write_text("file_name,label\ntrain_0_0.png,4\n")


def _folder_link_loop(tree: Path) -> None:
    os.symlink("..", tree / "train" / "grade_2" / "loop")


# (name, damage, verify exit code, convert works, what to find in the messages)
TREE_CASES = [
    ("empty grade folder", _empty_grade, 0, True, "train/grade_3"),
    ("unknown folder name", _unknown_folder, 1, False, "train/unsure"),
    ("nested folder", _nested_folder, 1, True, "train/grade_2/batch2"),
    ("stray metadata.csv", _stray_metadata, 1, True, "train/metadata.csv"),
    ("folder symlink loop", _folder_link_loop, 0, True, "train/grade_2/loop"),
]


@pytest.mark.parametrize(
    ("name", "damage", "verify_code", "converts", "shown"), TREE_CASES, ids=[c[0] for c in TREE_CASES]
)
def test_damaged_folders_in_verify_convert_and_split(tmp_path, capsys, name, damage, verify_code, converts, shown):
    from spine_hf.data.dataset_folder import load_grade_dataset

    tree = good_tree(tmp_path / "tree", per_grade=2)
    damage(tree)
    before = _digests(tree)
    assert main(["data", "verify", str(tree)]) == verify_code
    out = capsys.readouterr().out
    assert shown in out
    code = main(["data", "convert", str(tree), str(tmp_path / "ds")])
    captured = capsys.readouterr()
    if converts:
        assert code == 0, captured.err
        labels = load_grade_dataset(tmp_path / "ds")["train"]["label"]
        expected = [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
        if name == "empty grade folder":
            expected = [0, 0, 1, 1, 2, 2, 4, 4]
        if name == "nested folder":
            expected = sorted([*expected, 2])  # the nested image keeps its grade
        assert sorted(labels) == expected  # metadata.csv did not relabel anything
    else:
        assert code == 1 and shown in captured.err
    # split: the damaged split folder used as a pool
    code = main(["data", "split", str(tree / "train"), str(tmp_path / "out")])
    captured = capsys.readouterr()
    if converts:
        assert code == 0, captured.err
        images = sum(1 for p in (tmp_path / "out").rglob("*.png"))
        assert images == len(load_grade_dataset(tmp_path / "ds")["train"])
    else:
        assert code == 1 and "unsure" in captured.err
    assert _digests(tree) == before
