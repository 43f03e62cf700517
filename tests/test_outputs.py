"""`outputs`: a folder appears only once complete, an existing one is replaced only when asked."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from spine_hf.outputs import OutputExistsError, place_file, staged_folder


def test_a_folder_appears_only_when_the_block_ends(tmp_path):
    out = tmp_path / "out"
    with staged_folder(out) as partial:
        (partial / "a.txt").write_text("a")
        assert not out.exists()
        assert partial.name == f".out.partial-{os.getpid()}" and partial.parent == tmp_path
    assert (out / "a.txt").read_text() == "a"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_an_error_leaves_the_old_folder_as_it_was(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(OSError, match="disk full"), staged_folder(out, overwrite=True) as partial:
        (partial / "new.txt").write_text("new")
        raise OSError("disk full")
    assert [p.name for p in out.iterdir()] == ["old.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_a_non_empty_folder_is_replaced_only_with_overwrite_and_never_when_not_replaceable(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(OutputExistsError, match="--overwrite"), staged_folder(out):
        pass
    with (
        pytest.raises(OutputExistsError, match="nothing is ever merged"),
        staged_folder(out, overwrite=True, replaceable=False),
    ):
        pass
    with staged_folder(out, overwrite=True) as partial:
        (partial / "new.txt").write_text("new")
    assert [p.name for p in out.iterdir()] == ["new.txt"]
    # Both kinds of caller can catch it: a bad argument and an existing file.
    assert issubclass(OutputExistsError, ValueError) and issubclass(OutputExistsError, FileExistsError)


def test_leftovers_of_dead_runs_are_removed_and_a_live_runs_are_kept(tmp_path):
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = tmp_path / f".out.partial-{int(finished.stdout)}"
    dead.mkdir()
    alive = tmp_path / f".out.partial-{os.getppid()}"  # the process that started this test run
    alive.mkdir()
    with staged_folder(tmp_path / "out"):
        pass
    assert not dead.exists() and alive.is_dir()


def test_place_file_copies_or_links_and_never_overwrites(tmp_path):
    source = tmp_path / "source.png"
    source.write_bytes(b"pixels")
    place_file(source, tmp_path / "copy" / "a.png", link=False)
    place_file(source, tmp_path / "link" / "a.png", link=True)
    assert (tmp_path / "copy" / "a.png").read_bytes() == b"pixels"
    assert os.stat(tmp_path / "copy" / "a.png").st_ino != os.stat(source).st_ino  # a copy shares nothing
    assert os.stat(tmp_path / "link" / "a.png").st_ino == os.stat(source).st_ino
    with pytest.raises(RuntimeError, match="written twice"):
        place_file(source, tmp_path / "copy" / "a.png", link=False)


def test_publish_file_replaces_a_file_whole_and_leaves_nothing_beside_it(tmp_path):
    from spine_hf.outputs import publish_file

    path = tmp_path / "shown.png"
    publish_file(path, b"first")
    publish_file(path, b"second, longer")
    assert path.read_bytes() == b"second, longer"
    assert [p.name for p in tmp_path.iterdir()] == ["shown.png"]
