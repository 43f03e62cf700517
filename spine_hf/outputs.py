"""Publishing a folder (or a file): it appears under its name only once complete, and never replaces a user's
folder unasked.

Every command that writes a folder (organize, split, convert, evaluate, calibrate, a model folder)
fills a hidden ``.NAME.partial-PID`` beside it inside `staged_folder` and renames it into place when
the block ends, so an interrupted command leaves nothing that later loads as if it were complete;
the next run removes such leftovers. An existing non-empty folder is replaced only with
``overwrite`` (the CLI's ``--overwrite``), and only after the new one is complete; with
``replaceable=False`` (organize, split: a pool may hold the only copy of moved files) never.
"""

from __future__ import annotations

import glob
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PARTIAL = "partial"


class OutputExistsError(FileExistsError, ValueError):
    """The output folder exists and is not empty; the message says how to proceed."""


def check_new_output(out: str | os.PathLike, overwrite: bool, replaceable: bool = True) -> None:
    """Refuse an existing non-empty `out` unless `overwrite` (and it is `replaceable`)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} is a file; choose a folder name for the output")
    if not (out.is_dir() and any(out.iterdir())):
        return
    if not replaceable:
        raise OutputExistsError(
            f"{out} already exists and is not empty; choose a new output folder (nothing is ever merged into or "
            "overwritten in an existing one)"
        )
    if not overwrite:
        raise OutputExistsError(
            f"{out} already exists and is not empty; choose a new folder, or pass --overwrite to replace it "
            "once the new one is complete"
        )


@contextmanager
def staged_folder(out: str | os.PathLike, overwrite: bool = False, *, replaceable: bool = True) -> Iterator[Path]:
    """Yield an empty hidden folder to fill; it becomes `out` when the block ends without error.

    On an error (a full disk, Ctrl-C) the hidden folder is removed and `out` is left as it was.
    """
    out = Path(out)
    check_new_output(out, overwrite, replaceable)
    _remove_leftovers(out)
    partial = out.with_name(f".{out.name}.{PARTIAL}-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        yield partial
        replace_folder(partial, out)
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def publish_file(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that no reader ever sees a part of it: a hidden file beside it, then a rename."""
    handle, staging = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".{PARTIAL}")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
        os.replace(staging, path)
    finally:
        if os.path.exists(staging):
            os.unlink(staging)


def place_file(source: Path, destination: Path, link: bool) -> None:
    """Put a copy of `source` at `destination`; with `link`, a hard link where the file system allows
    (for moves: the source is removed only once the output is published, so nothing is ever stranded)."""
    if destination.exists():
        raise RuntimeError(f"{destination.name} would be written twice; nothing was overwritten")
    destination.parent.mkdir(parents=True, exist_ok=True)
    if link:
        try:
            os.link(source, destination)
            return
        except OSError:
            pass  # another file system, or links not allowed: copy
    shutil.copy2(source, destination)


def replace_folder(new: Path, target: Path) -> None:
    """Put `new` where `target` is: two renames, so `target` is never half old, half new."""
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    if target.exists():
        os.replace(target, old)
    os.replace(new, target)
    shutil.rmtree(old, ignore_errors=True)


def _remove_leftovers(out: Path) -> None:
    """Hidden folders of interrupted runs for `out` whose process is gone (they only ever hold copies)."""
    for leftover in out.parent.glob(f".{glob.escape(out.name)}.{PARTIAL}-*"):
        pid = leftover.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            shutil.rmtree(leftover, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, but belongs to someone else
        return True
    return True
