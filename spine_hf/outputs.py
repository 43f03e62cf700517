"""Output folders that appear only once complete and never replace a user's folder unasked.

Every command that writes a folder (a dataset, a model, an evaluation) writes it under a hidden
``.NAME.partial-PID`` beside it and renames it into place at the end, so an interrupted command
leaves nothing that later loads as if it were complete. An existing non-empty folder is replaced
only with ``overwrite`` (the CLI's ``--overwrite``), and only after the new one is complete.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def check_new_output(out: str | os.PathLike, overwrite: bool) -> None:
    """Refuse an existing non-empty `out` unless `overwrite`."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} is a file; choose a folder name for the output")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(
            f"{out} already exists and is not empty; choose a new folder, or pass --overwrite to replace it "
            "once the new one is complete"
        )


@contextmanager
def staged_folder(out: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty hidden folder to fill; it becomes `out` when the block ends without error."""
    out = Path(out)
    check_new_output(out, overwrite)
    partial = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        yield partial
        replace_folder(partial, out)
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def replace_folder(new: Path, target: Path) -> None:
    """Put `new` where `target` is: two renames, so `target` is never half old, half new."""
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    if target.exists():
        os.replace(target, old)
    os.replace(new, target)
    shutil.rmtree(old, ignore_errors=True)
