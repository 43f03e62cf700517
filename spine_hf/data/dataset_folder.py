"""The converted dataset on disk: a `DatasetDict` folder written straight from image files, and read back.

Every dataset this project writes has the features of `dataset_features` (image, grade label as a
ClassLabel of the five grades, source file, patient id: "" where none is known). Reading goes
through `load_grade_dataset`, which checks those features and says what to run when a folder is
something else, and `decode_split`, which decodes a split's images with the project's decoder and
lists every row it cannot decode.

Writing: `DatasetDict.save_to_disk` would do, but it first passes every image column through
datasets' `embed_storage`, which turns each image's bytes into a Python object and back even when
they are already in the table (about 0.3 s of a 2.6 s `convert` of the 4,826 knee PNGs, more when
the machine is busy). Here the bytes go from the files into Arrow buffers once, with no Python
object per row, and are written by datasets' own `ArrowWriter` in shards of at most `SHARD_BYTES`
(as `save_to_disk` shards). The folder is then opened with `load_from_disk` and checked row for
row, so a datasets version that reads the layout differently fails at conversion, not in training.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from spine_hf.data.imaging import ImageDecodeError, decode_image, display_path
from spine_hf.grades import GRADE_NAMES

# save_to_disk's default max_shard_size; also keeps each shard's Arrow offsets within int32.
SHARD_BYTES = 500 * 1024**2

# One row: (file holding the image's bytes, the image's name, grade, the `file` column, the `patient` column).
Row = tuple[str, str, int, str, str]


def dataset_features():
    """The features of every dataset this project writes: image, grade label, source file and patient id
    (what keeps a patient's images together in cross-validation folds; "" where none is known)."""
    from datasets import ClassLabel, Features, Image, Value

    return Features({"image": Image(), "label": ClassLabel(names=list(GRADE_NAMES)), "file": Value("string"),
                     "patient": Value("string")})  # fmt: skip


# ----------------------------------------------------------------------------------------- reading


def load_grade_dataset(path: str | os.PathLike):
    """Load a dataset written by `convert_to_dataset` and check that it has the grade labels."""
    import datasets

    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"{path}: no such dataset folder; build one with `spine-hf data convert IMAGES {path}`")
    if (folder / "state.json").is_file():
        raise ValueError(f"{path} holds a single Dataset; spine-hf needs a DatasetDict with named splits")
    if not (folder / "dataset_dict.json").is_file():
        from spine_hf.data.layout import scan

        if scan(folder).images:
            raise ValueError(
                f"{path} is a folder of images, not a converted dataset; run `spine-hf data convert {path} OUT` "
                "and pass OUT"
            )
        raise ValueError(f"{path} is not a dataset written by `spine-hf data convert` (no dataset_dict.json)")
    dataset = datasets.load_from_disk(str(path))
    for split, part in dataset.items():
        label = part.features.get("label")
        if "image" not in part.features or getattr(label, "names", None) != list(GRADE_NAMES):
            raise ValueError(
                f"{path} ({split}) is not a spine-hf dataset: expected an image column and a label ClassLabel "
                f"named {list(GRADE_NAMES)}, found {part.features}; build it with `spine-hf data convert`"
            )
    return dataset


def load_grade_split(path: str | os.PathLike, split: str):
    """One split of a dataset written by `convert_to_dataset`; the error names the splits there are."""
    dataset = load_grade_dataset(path)
    if split not in dataset:
        raise ValueError(f"{path} has no split {split!r} (it has {sorted(dataset)})")
    return dataset[split]


def row_failure(index: int, name: str | None, err: ImageDecodeError) -> str:
    """How one undecodable row of a dataset is listed: `row N (file): problem`."""
    return f"row {index} ({display_path(name or 'embedded image')}): {err.problem}"


def undecodable_rows(failures: list[str]) -> ValueError:
    """One error listing the rows of a dataset that cannot be decoded (the first 20), pointing to `convert`."""
    more = f"\n  ... and {len(failures) - 20} more" if len(failures) > 20 else ""
    return ValueError(
        f"{len(failures)} images of this dataset cannot be decoded (rebuild it with `spine-hf data convert`, "
        "which checks every image):\n  " + "\n  ".join(failures[:20]) + more
    )


def decode_cell(cell: dict):
    """The canonical image of one stored image cell (`{"bytes", "path"}`, read with ``Image(decode=False)``).

    Raises:
        ImageDecodeError: the decoder refuses it.
    """
    return decode_image(cell["bytes"] if cell.get("bytes") is not None else cell["path"])


def decode_split(rows) -> list:
    """Every image of a dataset split as a canonical PIL image; one error lists every row that fails."""
    from datasets import Image as ImageFeature

    cells = rows.cast_column("image", ImageFeature(decode=False))["image"]
    names = rows["file"] if "file" in rows.column_names else [cell.get("path") or "" for cell in cells]

    def one(index: int):
        cell = cells[index]
        try:
            return decode_cell(cell)
        except ImageDecodeError as err:
            return row_failure(index, names[index], err)

    # Threads, not processes: the results are pixels, which processes would pickle back.
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        images = list(pool.map(one, range(len(cells))))
    failures = [image for image in images if isinstance(image, str)]
    if failures:
        raise undecodable_rows(failures)
    return images


# ----------------------------------------------------------------------------------------- writing


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
               "file": pa.array([row[3] for row in rows], pa.string()),
               "patient": pa.array([row[4] for row in rows], pa.string())}  # fmt: skip
    return pa.table(columns).cast(features.arrow_schema)
