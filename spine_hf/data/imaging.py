"""One decoder for every radiograph the project touches.

Training, evaluation, `pipeline()` input and the app all go through `decode_image` (files, bytes) or
`to_canonical` (images someone else already opened), so a picture looks the same to the model
everywhere. The canonical representation is an 8-bit single-channel PIL image (mode ``"L"``):

* 8-bit grayscale PNG/JPEG pass through unchanged.
* Colour (RGB, RGBA, palette, CMYK, ...) becomes luma (ITU-R 601-2); transparent pixels are laid over
  black, the colour of air on a radiograph.
* 16-bit PNG is scaled by its *significant* bits: the PNG ``sBIT`` chunk when present, otherwise the
  smallest of 8/10/12/14/16 bits that holds the brightest pixel (12-bit detector data stored in a
  16-bit container is the common case). A 16-bit image never saturates to white, and ``v * 257``
  decodes to the same image as its 8-bit twin ``v``.
* DICOM: modality LUT (rescale), then the VOI LUT or the first window, else the full range of
  ``BitsStored``; MONOCHROME1 and an INVERSE presentation LUT are flipped so bone is always bright.
* EXIF orientation is applied; images over ``max_pixels`` are refused before they are decoded.
"""

from __future__ import annotations

import io
import logging
import os
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

logger = logging.getLogger(__name__)
# pydicom logs a traceback for every codec that fails; the failure reaches the user as an
# ImageDecodeError that names the file and the fix, so its log is noise.
logging.getLogger("pydicom.pixels.decoders.base").setLevel(logging.CRITICAL)

CANONICAL_MODE = "L"
# Raise when a change to this module changes any decoded pixel: decoded caches of the old one are rebuilt.
DECODER_VERSION = 1
# 8192 x 8192: four times the largest plain radiograph (43 cm at 100 um), far below a bomb.
DEFAULT_MAX_PIXELS = 1 << 26
DICOM_EXTENSIONS = frozenset({".dcm", ".dicom"})
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}) | DICOM_EXTENSIONS
# PIL `info` keys that carry no personal data and do not change pixels: a file with only these
# can be kept byte for byte when it is already 8-bit grayscale.
_BENIGN_INFO = frozenset(
    {"dpi", "jfif", "jfif_version", "jfif_unit", "jfif_density", "gamma", "srgb", "aspect"}
    | {"progressive", "progression", "interlace", "compression"}
)

Source = str | os.PathLike | bytes | BinaryIO


class ImageDecodeError(ValueError):
    """A file that cannot become a canonical image; the message names the file and the fix.

    `kind` is one of: empty, unreadable, not_image, corrupt, too_large, no_pixel_data, codec.
    """

    def __init__(self, name: str, kind: str, problem: str, fix: str):
        # One line, whatever the underlying library wrote: reports list one problem per line.
        self.name, self.kind, self.problem, self.fix = display_path(name), kind, " ".join(problem.split()), fix
        super().__init__(f"{self.name}: {self.problem}. {fix}")

    def __reduce__(self):  # pickled whole (the default would call __init__ with the message alone)
        return type(self), (self.name, self.kind, self.problem, self.fix)


@dataclass(frozen=True)
class DecodedImage:
    """A canonical image and what it was before."""

    # 8-bit grayscale, EXIF orientation applied.
    image: Image.Image
    # "PNG", "JPEG", "DICOM", ... as the file really is, whatever its extension.
    format: str
    # The source's colour layout: a PIL mode ("L", "I;16", "RGB") or a DICOM photometric interpretation.
    mode: str
    # Significant bits per sample in the source.
    bits: int
    # True when the file already is a metadata-free 8-bit grayscale PNG/JPEG: its bytes may be kept.
    canonical_source: bool
    # DICOM BurnedInAnnotation = YES: the pixels themselves may show text that identifies the patient.
    burned_in_text: bool = False


def decode_image(source: Source, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode a file, bytes or stream to the canonical 8-bit grayscale image.

    Raises:
        ImageDecodeError: empty, not an image, corrupt, too large or an undecodable DICOM.
    """
    return decode(source, max_pixels=max_pixels).image


def decode(source: Source, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> DecodedImage:
    """Like `decode_image`, also telling what the source was (format, mode, bit depth)."""
    name, data = _read(source)
    if not data:
        raise ImageDecodeError(name, "empty", "the file is empty (0 bytes)", "Re-export it or remove it.")
    if _is_dicom(name, data):
        return _decode_dicom(name, data, max_pixels)
    return _decode_pil(name, data, max_pixels)


def to_canonical(image: Image.Image | np.ndarray) -> Image.Image:
    """Bring an image that is already in memory (from `datasets`, Gradio, numpy) to canonical form.

    A uint16 array or an ``I;16`` image is scaled by its significant bits exactly as `decode_image`
    does for a 16-bit PNG without ``sBIT``; floats are read as 0..1 when they fit, else min-max.
    """
    if isinstance(image, np.ndarray):
        return Image.fromarray(_array_to_gray8(image))
    if not isinstance(image, Image.Image):
        raise TypeError(f"expected a PIL image or a numpy array, got {type(image).__name__}")
    if image.mode == CANONICAL_MODE:
        return image
    gray, _ = _pil_to_gray8(image, significant_bits=None)
    return gray


def display_path(text: str | os.PathLike) -> str:
    """A path that prints safely even when its name is not valid UTF-8 (bad bytes as \\xNN)."""
    return os.fsencode(text).decode("utf-8", errors="backslashreplace")


def is_image_file(path: str | os.PathLike) -> bool:
    """Whether a file name has an image extension this project reads."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def _read(source: Source) -> tuple[str, bytes]:
    if isinstance(source, bytes | bytearray | memoryview):
        return "<bytes>", bytes(source)
    if isinstance(source, str | os.PathLike):
        path = Path(source)
        try:
            return str(path), path.read_bytes()
        except IsADirectoryError as err:
            raise ImageDecodeError(
                str(path), "unreadable", "is a folder, not an image file", "Pass an image file."
            ) from err
        except OSError as err:
            raise ImageDecodeError(
                str(path),
                "unreadable",
                f"cannot be read ({err.strerror or err})",
                "Check that it exists and is readable.",
            ) from err
    name = getattr(source, "name", "<stream>")
    return str(name), source.read()


def _is_dicom(name: str, data: bytes) -> bool:
    return data[128:132] == b"DICM" or Path(name).suffix.lower() in DICOM_EXTENSIONS


def _looks_like_text(data: bytes) -> bool:
    head = data[:512]
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(ch.isprintable() or ch in "\r\n\t" for ch in text)


def _decode_pil(name: str, data: bytes, max_pixels: int) -> DecodedImage:
    try:
        with warnings.catch_warnings():
            # We enforce our own, lower pixel limit below; PIL's warning would only be noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as err:
        raise _too_large(name, str(err), max_pixels) from err
    except UnidentifiedImageError as err:
        what = "a text file" if _looks_like_text(data) else "not an image format this project reads"
        raise ImageDecodeError(
            name, "not_image", f"is {what}, whatever its extension says", "Replace it with a PNG, JPEG or DICOM file."
        ) from err
    except (OSError, SyntaxError, ValueError) as err:
        raise _corrupt(name, err) from err
    width, height = image.size
    if width * height > max_pixels:
        raise _too_large(name, f"{width} x {height} = {width * height:,} pixels", max_pixels)
    if width < 1 or height < 1:
        raise ImageDecodeError(name, "corrupt", f"has no pixels ({width} x {height})", "Re-export it.")
    file_format, source_mode = image.format or "unknown", image.mode
    try:
        image.load()
    except (OSError, SyntaxError, ValueError, struct.error) as err:
        raise _corrupt(name, err) from err
    canonical_source = (
        file_format in ("PNG", "JPEG")
        and source_mode == CANONICAL_MODE
        and set(image.info) <= _BENIGN_INFO
        and not image.getexif()
    )
    image = _apply_exif_orientation(name, image)
    sbit = _png_significant_bits(data) if file_format == "PNG" else None
    gray, bits = _pil_to_gray8(image, significant_bits=sbit)
    return DecodedImage(gray, file_format, source_mode, bits, canonical_source)


def _apply_exif_orientation(name: str, image: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(image)
    except Exception as err:  # a broken EXIF block must not make a readable image unreadable
        logger.warning("%s: EXIF orientation could not be read (%s); using the stored orientation", name, err)
        return image


def _corrupt(name: str, err: BaseException) -> ImageDecodeError:
    return ImageDecodeError(
        name,
        "corrupt",
        f"is corrupt or truncated ({err})",
        "Re-export or re-download it, or remove it from the folder.",
    )


def _too_large(name: str, detail: str, max_pixels: int) -> ImageDecodeError:
    return ImageDecodeError(
        name,
        "too_large",
        f"is too large to decode safely ({detail}; the limit is {max_pixels:,} pixels)",
        "Downscale it, or pass a higher max_pixels if you trust the file.",
    )


def _png_significant_bits(data: bytes) -> int | None:
    """The grayscale value of a PNG's sBIT chunk, which PIL does not expose."""
    pos = 8
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        if kind == b"sBIT" and length >= 1:
            return data[pos + 8]
        if kind in (b"IDAT", b"IEND"):
            return None
        pos += 12 + length
    return None


def _pil_to_gray8(image: Image.Image, significant_bits: int | None) -> tuple[Image.Image, int]:
    mode = image.mode
    if mode == "L":
        return image, 8
    if mode == "1":
        return image.convert("L"), 1
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        array = np.asarray(image)
        return Image.fromarray(_array_to_gray8(array, significant_bits)), _bits_of(array, significant_bits)
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif mode == "PA":
        image = image.convert("RGBA")
    elif mode not in ("RGB", "RGBA", "LA", "La", "RGBa"):
        image = image.convert("RGB")  # CMYK, YCbCr, LAB, HSV
    if image.mode in ("RGBA", "LA", "RGBa", "La"):
        image = _over_black(image)
    return image.convert("L"), 8


def _over_black(image: Image.Image) -> Image.Image:
    rgba = np.asarray(image.convert("RGBA"), dtype=np.float32)
    rgb = rgba[..., :3] * (rgba[..., 3:] / 255.0)
    return Image.fromarray(np.round(rgb).astype(np.uint8), "RGB")


def _bits_of(array: np.ndarray, significant_bits: int | None) -> int:
    if significant_bits:
        return int(significant_bits)
    top = int(array.max()) if array.size and np.issubdtype(array.dtype, np.integer) else 0
    for bits in (8, 10, 12, 14, 16):
        if top < (1 << bits):
            return bits
    return 16


def _array_to_gray8(array: np.ndarray, significant_bits: int | None = None) -> np.ndarray:
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[-1] in (3, 4))):
        raise ValueError(f"expected a 2-D grayscale or H x W x 3/4 colour array, got shape {array.shape}")
    array = _to_uint8(array, significant_bits)
    if array.ndim == 2:
        return array
    colour = Image.fromarray(array, "RGBA" if array.shape[-1] == 4 else "RGB")
    return np.asarray(_pil_to_gray8(colour, None)[0])


def _to_uint8(array: np.ndarray, significant_bits: int | None) -> np.ndarray:
    """Any sample type to uint8: integers by their significant bits, floats as 0..1 or min-max."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if np.issubdtype(array.dtype, np.integer) and array.size and array.min() >= 0 and array.max() < 1 << 16:
        return _scale(array, (1 << _bits_of(array, significant_bits)) - 1)
    values = array.astype(np.float64)
    lo, hi = (0.0, 1.0) if values.size and values.min() >= 0 and values.max() <= 1 else _min_max(values)
    return _quantize((values - lo) / max(hi - lo, 1e-12))


def _min_max(values: np.ndarray) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    return (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)


def _scale(array: np.ndarray, max_value: int) -> np.ndarray:
    return _quantize(array.astype(np.float64) / max_value)


def _quantize(unit: np.ndarray) -> np.ndarray:
    """0..1 floats to uint8, rounding to nearest."""
    return np.round(np.clip(np.nan_to_num(unit), 0.0, 1.0) * 255.0).astype(np.uint8)


# --------------------------------------------------------------------------------------------- DICOM


def _decode_dicom(name: str, data: bytes, max_pixels: int) -> DecodedImage:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=data[128:132] != b"DICM")
    except (InvalidDicomError, OSError, ValueError, EOFError, KeyError, struct.error) as err:
        raise ImageDecodeError(
            name, "corrupt", f"is not a readable DICOM file ({err})", "Re-export it from the PACS or remove it."
        ) from err
    if not any(tag in ds for tag in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise ImageDecodeError(
            name,
            "no_pixel_data",
            "is a DICOM file without pixel data (a report or presentation state, not an image)",
            "Remove it from the image folder.",
        )
    rows, cols = int(ds.get("Rows", 0)), int(ds.get("Columns", 0))
    if rows * cols > max_pixels:
        raise _too_large(name, f"{cols} x {rows} = {rows * cols:,} pixels", max_pixels)
    try:
        array = ds.pixel_array
    except Exception as err:  # pydicom raises several types for missing codecs and broken data
        syntax = ds.file_meta.get("TransferSyntaxUID", None) if hasattr(ds, "file_meta") else None
        syntax_name = getattr(syntax, "name", str(syntax))
        raise ImageDecodeError(
            name,
            "codec",
            f"has pixel data this installation cannot decode (transfer syntax {syntax_name}: {err})",
            "Install the DICOM codecs with `pip install 'spine-hf[dicom]'`, or export it uncompressed.",
        ) from err
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if frames > 1:
        logger.warning("%s: DICOM with %d frames; using the first", name, frames)
        array = array[0]
    bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 8)))
    if photometric in ("MONOCHROME1", "MONOCHROME2"):
        unit = _dicom_gray_to_unit(name, np.asarray(array), ds)
        inverse = str(ds.get("PresentationLUTShape", "IDENTITY")).upper() == "INVERSE"
        if (photometric == "MONOCHROME1") != inverse:
            unit = 1.0 - unit
        gray = _quantize(unit)
    elif photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        rgb = np.asarray(apply_color_lut(array, ds))
        gray = _array_to_gray8(_scale(rgb, 65535 if rgb.dtype == np.uint16 else 255))
    else:  # RGB, YBR_*: pydicom already returns RGB
        rgb = np.asarray(array)
        gray = _array_to_gray8(rgb if rgb.dtype == np.uint8 else _scale(rgb, (1 << bits) - 1))
    burned_in = str(ds.get("BurnedInAnnotation", "")).strip().upper() == "YES"
    return DecodedImage(
        Image.fromarray(gray), "DICOM", photometric, bits, canonical_source=False, burned_in_text=burned_in
    )


def _dicom_gray_to_unit(name: str, stored: np.ndarray, ds) -> np.ndarray:
    """Modality LUT, then VOI LUT or window or the stored range, as 0..1 floats."""
    from pydicom.pixels import apply_modality_lut, apply_voi

    values = np.asarray(apply_modality_lut(stored, ds), dtype=np.float64)
    voi_sequence = ds.get("VOILUTSequence")
    if voi_sequence and "LUTDescriptor" in voi_sequence[0] and "LUTData" in voi_sequence[0]:
        entries, first = voi_sequence[0].LUTDescriptor[0] or 1 << 16, voi_sequence[0].LUTDescriptor[1]
        table = np.asarray(apply_voi(np.arange(first, first + entries), ds), dtype=np.float64)
        mapped = np.asarray(apply_voi(np.round(values).astype(np.int64), ds), dtype=np.float64)
        return (mapped - table.min()) / max(table.max() - table.min(), 1e-12)
    window = _first_window(ds)
    if window is not None:
        center, width = window
        function = str(ds.get("VOILUTFunction", "LINEAR")).upper()
        if function == "SIGMOID":
            return 1.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
        if function != "LINEAR_EXACT":  # LINEAR, PS3.3 C.11.2.1.2.1
            center, width = center - 0.5, width - 1.0
        return np.clip((values - center) / max(width, 1e-12) + 0.5, 0.0, 1.0)
    lo, hi = _modality_range(ds)
    return (values - lo) / max(hi - lo, 1e-12)


def _first_window(ds) -> tuple[float, float] | None:
    if "WindowCenter" not in ds or "WindowWidth" not in ds:
        return None

    from pydicom.multival import MultiValue

    def first(value):
        return float(value[0] if isinstance(value, MultiValue | list | tuple) else value)

    try:
        center, width = first(ds.WindowCenter), first(ds.WindowWidth)
    except (TypeError, ValueError, IndexError):
        return None
    return (center, width) if width >= 1 else None


def _modality_range(ds) -> tuple[float, float]:
    """Output range of the modality LUT over every value `BitsStored` can hold."""
    modality_lut = ds.get("ModalityLUTSequence")
    if modality_lut:
        return 0.0, float((1 << int(modality_lut[0].LUTDescriptor[2])) - 1)
    bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 16)))
    if int(ds.get("PixelRepresentation", 0)) == 1:
        lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    else:
        lo, hi = 0, (1 << bits) - 1
    slope, intercept = float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)
    ends = sorted((lo * slope + intercept, hi * slope + intercept))
    return ends[0], ends[1]
