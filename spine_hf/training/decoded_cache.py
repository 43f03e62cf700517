"""The decoded cache: a split's images decoded once, as uint8 arrays of one shape in one memory-mapped file.

Training reads every image resized to a fixed shape, (height, width) pixels (`Preprocessing.square`:
a square for square films, a tall rectangle for spine films). Decoding full-size radiographs for that
is the expensive part, so it is done once per split and shape and kept in a NumPy ``.npy`` file
(N x height x width, uint8) beside the dataset. Every process on the machine maps
the same file: N training processes share one copy through the page cache, later runs and resumes
start without decoding anything, and a cache larger than memory is read from disk as needed.

The file name carries a key made of the split's datasets fingerprint, its row count, both sides of the
shape and `imaging.DECODER_VERSION`, so a changed split, another shape or another decoder never reads an
old cache (a square's key is the one it had before shapes could be tall, so square caches stay). A cache
is built in a hidden temporary file by worker processes and renamed into place only when complete; one
whose size or header does not match what its name promises is rebuilt, never trusted. Several processes
may build the same cache at once (separate runs): each writes its own
temporary file and the last rename wins, with the same bytes.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spine_hf.data.dataset_folder import decode_cell, row_failure, undecodable_rows
from spine_hf.data.imaging import DECODER_VERSION, ImageDecodeError
from spine_hf.data.parallel import map_cpu
from spine_hf.models.preprocessing import Shape, as_shape, shape_name, square

logger = logging.getLogger(__name__)

# What forked workers read while a cache is built (set in the parent before the pool starts).
_BUILD: dict = {}


@dataclass(frozen=True)
class CacheResult:
    """A mapped cache and how it was obtained."""

    squares: np.ndarray  # N x height x width uint8, memory-mapped read-only
    path: Path
    # Images decoded to build it (0 when an existing cache was mapped), and the seconds that took.
    decoded: int
    seconds: float


def default_cache_folder(split) -> Path:
    """``squares/`` inside the dataset folder the split was loaded from (so `convert --overwrite` takes
    its caches with it), or a folder in the temporary directory for a split that lives in memory. The
    folder keeps the name it had when every cached image was square, so existing caches are found."""
    files = split.cache_files
    if files:
        return Path(files[0]["filename"]).parent.parent / "squares"
    return Path(tempfile.gettempdir()) / "spine-hf-squares"


def cache_file(split, shape: int | Shape, folder: str | os.PathLike) -> Path:
    """Where the cache of `split` at `shape` (one side, or (height, width)) lives in `folder` (a name that
    changes with its content)."""
    size = shape_name(as_shape(shape))
    key = f"{split._fingerprint}|{len(split)}|{size}|{DECODER_VERSION}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    name = (split.split and str(split.split)) or "split"
    return Path(folder) / f"{name}-{size}px-{digest}.npy"


def open_decoded(split, shape: int | Shape, folder: str | os.PathLike, workers: int | None = None) -> CacheResult:
    """Every row of `split` resized to `shape` (one side, or (height, width)): mapped from the cache, built
    first if needed.

    Raises:
        ValueError: rows that cannot be decoded (all of them listed); no cache is written then.
    """
    shape = as_shape(shape)
    path = cache_file(split, shape, folder)
    squares = _mapped(path, len(split), shape)
    if squares is not None:
        logger.info("mapped %d decoded images from %s", len(split), path)
        return CacheResult(squares, path, 0, 0.0)
    start = time.perf_counter()
    _build(split, shape, path, workers)
    squares = _mapped(path, len(split), shape)
    if squares is None:  # only if the disk changed it under us
        raise RuntimeError(f"{path}: the decoded cache just written does not read back; check the disk")
    seconds = time.perf_counter() - start
    logger.info("decoded %d images into %s (%.1f s)", len(split), path, seconds)
    return CacheResult(squares, path, len(split), seconds)


def _mapped(path: Path, rows: int, shape: Shape) -> np.ndarray | None:
    """The cache at `path` mapped read-only, or None when it is missing or not what its name promises."""
    if not path.is_file():
        return None
    try:
        squares = np.load(path, mmap_mode="r")
    except (ValueError, OSError, EOFError) as err:  # a truncated or overwritten file
        logger.warning("decoded cache %s is damaged (%s); rebuilding it", path, err)
        return None
    if squares.shape != (rows, *shape) or squares.dtype != np.uint8:
        logger.warning(
            "decoded cache %s holds %s %s, not %d images of %s px; rebuilding it",
            path, squares.shape, squares.dtype, rows, shape_name(shape),
        )  # fmt: skip
        return None
    return squares


def _build(split, shape: Shape, path: Path, workers: int | None) -> None:
    """Decode every row into a hidden temporary file beside `path`, then rename it into place."""
    from datasets import Image as ImageFeature

    path.parent.mkdir(parents=True, exist_ok=True)
    handle, staging = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".partial.npy")
    os.close(handle)
    try:
        squares = np.lib.format.open_memmap(staging, mode="w+", dtype=np.uint8, shape=(len(split), *shape))
        rows = split.cast_column("image", ImageFeature(decode=False))
        names = rows["file"] if "file" in rows.column_names else None
        _BUILD.update(rows=rows, names=names, squares=squares)
        try:
            failures = [failure for failure in map_cpu(_fill, range(len(split)), workers=workers) if failure]
        finally:
            _BUILD.clear()
        if failures:  # all of them at once, not one per attempt
            raise undecodable_rows(failures)
        squares.flush()
        del squares
        os.replace(staging, path)
    finally:
        if os.path.exists(staging):
            os.unlink(staging)


def _fill(index: int) -> str | None:
    """Decode one row into the shared memory map (in a forked worker, or a thread); its failure, if any."""
    squares = _BUILD["squares"]
    cell = _BUILD["rows"][index]["image"]
    try:
        image = decode_cell(cell)
    except ImageDecodeError as err:
        names = _BUILD["names"]
        return row_failure(index, names[index] if names is not None else cell.get("path"), err)
    squares[index] = square(image, squares.shape[1:])
    return None
