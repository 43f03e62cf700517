"""Write a `DatasetDict` folder (what `datasets.load_from_disk` reads) straight from image files.

`DatasetDict.save_to_disk` would do, but it first passes every image column through datasets'
`embed_storage`, which turns each image's bytes into a Python object and back even when they are
already in the table (about 0.3 s of a 2.6 s `convert` of the 4,826 knee PNGs, more when the
machine is busy). Here the bytes go from the files into Arrow buffers once, with no Python object
per row, and are written by datasets' own `ArrowWriter` in shards of at most `SHARD_BYTES` (as
`save_to_disk` shards). The folder is then opened with `load_from_disk` and checked row for row, so
a datasets version that reads the layout differently fails here, at conversion, not in training.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from spine_hf.imaging import display_path

# save_to_disk's default max_shard_size; also keeps each shard's Arrow offsets within int32.
SHARD_BYTES = 500 * 1024**2

# One row: (file holding the image's bytes, the image's name, grade, the `file` column).
Row = tuple[str, str, int, str]


def write_dataset_dict(folder: Path, splits: dict[str, list[Row]], features, fingerprint: str) -> None:
    """Write `splits` (split name -> rows, none empty) as a DatasetDict under `folder` (created)."""
    import datasets

    folder.mkdir(parents=True, exist_ok=True)
    for split, rows in splits.items():
        _write_split(folder / split, split, rows, features, f"{fingerprint}-{split}")
    (folder / "dataset_dict.json").write_text(json.dumps({"splits": list(splits)}))
    written = datasets.load_from_disk(str(folder))
    for split, rows in splits.items():  # no row may go missing or change on the way
        part = written[split]
        if part.features != features or part.num_rows != len(rows) or part["file"] != [row[3] for row in rows]:
            raise RuntimeError(
                f"{folder}/{split} does not read back as written ({part.num_rows} rows, {part.features}); "
                f"expected {len(rows)} rows with {features}"
            )


def _write_split(folder: Path, split: str, rows: list[Row], features, fingerprint: str) -> None:
    import datasets
    from datasets.arrow_writer import ArrowWriter

    folder.mkdir()
    sizes = [os.path.getsize(row[0]) for row in rows]
    shards = _shards(sizes, SHARD_BYTES)
    names = [f"data-{index:05d}-of-{len(shards):05d}.arrow" for index in range(len(shards))]
    for (start, end), name in zip(shards, names, strict=True):
        with ArrowWriter(features=features, path=str(folder / name)) as writer:
            writer.write_table(_table(rows[start:end], sizes[start:end], features))
            writer.finalize()
    datasets.DatasetInfo(features=features).write_to_directory(str(folder))
    state = {  # what save_to_disk records for a Dataset with no format set
        "_data_files": [{"filename": name} for name in names],
        "_fingerprint": fingerprint,
        "_format_columns": None,
        "_format_kwargs": {},
        "_format_type": None,
        "_output_all_columns": False,
        "_split": split,
    }
    (folder / "state.json").write_text(json.dumps(state, indent=2, sort_keys=True))


def _shards(sizes: list[int], limit: int) -> list[tuple[int, int]]:
    """Consecutive (start, end) row ranges of at most `limit` bytes each (one row alone may exceed it)."""
    shards, start, total = [], 0, 0
    for index, size in enumerate(sizes):
        if total and total + size > limit:
            shards.append((start, index))
            start, total = index, 0
        total += size
    shards.append((start, len(sizes)))
    return shards


def _table(rows: list[Row], sizes: list[int], features):
    """The Arrow table of `rows`: every file's bytes read once, straight into one Arrow buffer."""
    import pyarrow as pa

    offsets = np.zeros(len(rows) + 1, dtype=np.int32)
    np.cumsum(sizes, out=offsets[1:])
    data = np.empty(int(offsets[-1]), dtype=np.uint8)
    view = memoryview(data)
    for (path, *_), start, end in zip(rows, offsets[:-1], offsets[1:], strict=True):
        with open(path, "rb", buffering=0) as handle:
            read = handle.readinto(view[start:end])
            if read != end - start or handle.read(1):
                raise RuntimeError(f"{display_path(path)} changed while it was being converted; run convert again")
    image_bytes = pa.BinaryArray.from_buffers(pa.binary(), len(rows), [None, pa.py_buffer(offsets), pa.py_buffer(data)])
    images = pa.StructArray.from_arrays([image_bytes, pa.array([row[1] for row in rows], pa.string())],
                                        names=["bytes", "path"])  # fmt: skip
    columns = {"image": images, "label": pa.array([row[2] for row in rows], pa.int64()),
               "file": pa.array([row[3] for row in rows], pa.string())}  # fmt: skip
    return pa.table(columns).cast(features.arrow_schema)
