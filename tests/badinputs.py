"""The bad-input corpus: every kind of messy file and folder a user may bring, generated on demand.

Each file case writes one file into a folder and says what the project must do with it:
"works" (graded like any other image) or "error" (refused with a message that names the file and
the fix, and that reason `kind`). Tree cases and CSV cases damage a whole folder or a labels file.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from factories import png_bomb, png_chunk, write_dicom, write_png
from PIL import Image


def _picture(seed: int, size: int = 48) -> np.ndarray:
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (6, 6)).astype(np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((size, size), Image.Resampling.BILINEAR))


def _save(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def _truncated_jpeg(folder: Path, seed: int) -> Path:
    data = _save(Image.fromarray(_picture(seed)), "JPEG", quality=90)
    return _write(folder / "truncated.jpg", data[: len(data) // 2])


def _corrupt_png(folder: Path, seed: int) -> Path:
    gray = _picture(seed)
    raw = b"".join(b"\x00" + row.tobytes() for row in gray)
    compressed = bytearray(zlib.compress(raw))
    compressed[len(compressed) // 2 :] = b"\xa5" * (len(compressed) - len(compressed) // 2)  # garbage stream
    header = struct.pack(">IIBBBBB", gray.shape[1], gray.shape[0], 8, 0, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", bytes(compressed))
    return _write(folder / "corrupt.png", data + png_chunk(b"IEND", b""))


def _zero_byte(folder: Path, seed: int) -> Path:
    return _write(folder / "empty.png", b"")


def _text_as_png(folder: Path, seed: int) -> Path:
    return _write(folder / "notes.png", b"radiology report: see attached\n")


def _cmyk_jpeg(folder: Path, seed: int) -> Path:
    return _write(folder / "cmyk.jpg", _save(Image.fromarray(_picture(seed)).convert("CMYK"), "JPEG"))


def _rgba_png(folder: Path, seed: int) -> Path:
    image = Image.fromarray(_picture(seed)).convert("RGBA")
    image.putalpha(200)
    return _write(folder / "rgba.png", _save(image, "PNG"))


def _palette_png(folder: Path, seed: int) -> Path:
    return _write(folder / "palette.png", _save(Image.fromarray(_picture(seed)).convert("P"), "PNG"))


def _exif_rotated_jpeg(folder: Path, seed: int) -> Path:
    image = Image.fromarray(_picture(seed)[:, :40])  # not square, so the rotation shows
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    return _write(folder / "exif_rotated.jpg", _save(image, "JPEG", exif=exif.tobytes()))


def _png16(folder: Path, seed: int) -> Path:
    return write_png(folder / "sixteen_bit.png", seed=seed, size=48, sixteen_bit=True)


def _one_pixel(folder: Path, seed: int) -> Path:
    return _write(folder / "one_pixel.png", _save(Image.new("L", (1, 1), seed % 256), "PNG"))


def _bomb(folder: Path, seed: int) -> Path:
    return _write(folder / "bomb.png", png_bomb(20000))


def _dicom_without_pixels(folder: Path, seed: int) -> Path:
    import pydicom

    path = write_dicom(folder / "report.dcm", _picture(seed))
    ds = pydicom.dcmread(path)
    del ds.PixelData
    ds.save_as(path)
    return path


def _dicom_compressed(folder: Path, seed: int) -> Path:
    import pydicom
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEG2000Lossless

    path = write_dicom(folder / "jpeg2000.dcm", _picture(seed).astype(np.uint16) * 16, BitsStored=12)
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
    ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + b"\x00" * 64])
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    return path


def _non_utf8_name(folder: Path, seed: int) -> Path:
    # Latin-1 "été.png": not valid UTF-8, so Python sees it with surrogate escapes.
    name = os.fsdecode(b"\xe9t\xe9.png")
    return _write(folder / name, _save(Image.fromarray(_picture(seed)), "PNG"))


def _name_with_spaces(folder: Path, seed: int) -> Path:
    return _write(folder / "lateral view  2 (copy).png", _save(Image.fromarray(_picture(seed)), "PNG"))


def _symlink_loop(folder: Path, seed: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "loop.png"
    os.symlink("loop.png", path)  # points at itself
    return path


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@dataclass(frozen=True)
class FileCase:
    name: str
    make: Callable[[Path, int], Path]
    # "works": graded like any image; "error": refused, naming the file.
    outcome: str
    # ImageDecodeError.kind for errors (or None).
    kind: str | None = None


FILE_CASES = [
    FileCase("truncated JPEG", _truncated_jpeg, "error", "corrupt"),
    FileCase("corrupt PNG", _corrupt_png, "error", "corrupt"),
    FileCase("zero-byte file", _zero_byte, "error", "empty"),
    FileCase("text file named .png", _text_as_png, "error", "not_image"),
    FileCase("CMYK JPEG", _cmyk_jpeg, "works"),
    FileCase("RGBA PNG", _rgba_png, "works"),
    FileCase("palette PNG", _palette_png, "works"),
    FileCase("EXIF-rotated JPEG", _exif_rotated_jpeg, "works"),
    FileCase("16-bit PNG", _png16, "works"),
    FileCase("1x1 image", _one_pixel, "works"),
    FileCase("20000x20000 bomb", _bomb, "error", "too_large"),
    FileCase("DICOM without pixel data", _dicom_without_pixels, "error", "no_pixel_data"),
    FileCase("DICOM, JPEG 2000 without codec", _dicom_compressed, "error", "codec"),
    FileCase("non-UTF-8 name", _non_utf8_name, "works"),
    FileCase("name with spaces", _name_with_spaces, "works"),
    FileCase("symlink loop", _symlink_loop, "error", "unreadable"),
]
CASE_IDS = [case.name for case in FILE_CASES]


def good_tree(root: Path, splits: tuple[str, ...] = ("train", "validation", "test"), per_grade: int = 1) -> Path:
    """A clean split tree: `per_grade` distinct PNGs in every grade of every split."""
    seed = 1000
    for split in splits:
        for grade in range(5):
            for index in range(per_grade):
                seed += 1
                write_png(root / split / f"grade_{grade}" / f"{split}_{grade}_{index}.png", seed=seed)
    return root
