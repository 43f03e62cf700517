"""The one decoder: every format lands on the same canonical 8-bit grayscale image."""

from __future__ import annotations

import io

import numpy as np
import pytest
from factories import png_bomb, png_chunk, write_dicom
from PIL import Image

from spine_hf.data.imaging import ImageDecodeError, decode, decode_image, to_canonical


@pytest.fixture
def gray8() -> np.ndarray:
    """A radiograph-like 8-bit image with the full range of values."""
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 255, 48 * 40).reshape(48, 40)
    return np.clip(ramp + rng.normal(0, 20, ramp.shape), 0, 255).astype(np.uint8)


def _png(array: np.ndarray, **save) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", **save)
    return buffer.getvalue()


def _with_sbit(png: bytes, bits: int) -> bytes:
    """Insert an sBIT chunk right after IHDR (8 signature bytes + 25 IHDR bytes)."""
    return png[:33] + png_chunk(b"sBIT", bytes([bits])) + png[33:]


def test_8bit_grayscale_passes_through_and_may_be_kept(gray8):
    decoded = decode(_png(gray8))
    assert decoded.image.mode == "L"
    assert decoded.canonical_source
    np.testing.assert_array_equal(np.asarray(decoded.image), gray8)


def test_16bit_png_decodes_like_its_8bit_twin(tmp_path, gray8):
    (tmp_path / "a16.png").write_bytes(_png(gray8.astype(np.uint16) * 257))
    (tmp_path / "a8.png").write_bytes(_png(gray8))
    deep = decode(tmp_path / "a16.png")
    assert deep.mode.startswith("I;16") and deep.bits == 16 and not deep.canonical_source
    np.testing.assert_array_equal(np.asarray(deep.image), np.asarray(decode_image(tmp_path / "a8.png")))


def test_16bit_png_keeps_its_contrast_where_pil_saturates(gray8):
    png = _png(gray8.astype(np.uint16) * 257)
    saturated = np.asarray(Image.open(io.BytesIO(png)).convert("L"))
    assert saturated.mean() > 240  # the trap this decoder avoids: PIL clips 16-bit values at 255
    decoded = np.asarray(decode_image(png))
    assert decoded.min() < 10 and decoded.max() > 245
    assert 100 < decoded.mean() < 160


def test_12bit_data_in_a_16bit_container_is_scaled_by_its_bits(gray8):
    twelve = np.round(gray8.astype(np.float64) / 255 * 4095).astype(np.uint16)
    decoded = decode(_png(twelve))
    assert decoded.bits == 12
    assert np.abs(np.asarray(decoded.image).astype(int) - gray8).max() <= 1


def test_png_sbit_chunk_is_honoured(gray8):
    # 10-bit values in a 16-bit PNG that says 14 bits are significant: scaled by 14 bits, not 10.
    ten = np.round(gray8.astype(np.float64) / 255 * 1023).astype(np.uint16)
    decoded = decode(_with_sbit(_png(ten), 14))
    assert decoded.bits == 14
    expected = np.round(ten / 16383 * 255)
    assert np.abs(np.asarray(decoded.image) - expected).max() <= 1


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "P", "LA", "CMYK", "I", "F"])
def test_colour_and_other_modes_become_the_same_grayscale(gray8, mode):
    image = Image.fromarray(gray8).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format="TIFF" if mode in ("CMYK", "I", "F") else "PNG")
    decoded = decode(buffer.getvalue())
    assert decoded.image.mode == "L" and decoded.mode == mode and not decoded.canonical_source
    assert np.abs(np.asarray(decoded.image).astype(int) - gray8).max() <= 1


def test_transparent_pixels_are_laid_over_black(gray8):
    rgba = np.dstack([gray8] * 3 + [np.full_like(gray8, 255)])
    rgba[:10, :, 3] = 0
    decoded = np.asarray(decode_image(_png(rgba)))
    assert (decoded[:10] == 0).all()
    np.testing.assert_array_equal(decoded[10:], gray8[10:])


def test_exif_orientation_is_applied(gray8):
    image = Image.fromarray(gray8)  # 40 wide, 48 high
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif, quality=95)
    decoded = decode(buffer.getvalue())
    assert decoded.image.size == (48, 40)
    assert not decoded.canonical_source  # the stored pixels are not what is shown


def test_jpeg_with_metadata_is_not_kept_byte_for_byte(gray8):
    buffer = io.BytesIO()
    Image.fromarray(gray8).save(buffer, format="JPEG", comment=b"Patient: Doe^Jane")
    assert not decode(buffer.getvalue()).canonical_source


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (b"", "empty"),
        (b"file,grade\nimage.png,3\n", "not_image"),
        (b"\x00\x01\x02binary junk" * 10, "not_image"),
    ],
)
def test_bad_bytes_are_refused_with_the_reason(data, kind):
    with pytest.raises(ImageDecodeError) as caught:
        decode(data)
    assert caught.value.kind == kind


def test_truncated_png_is_reported_corrupt(tmp_path, gray8):
    path = tmp_path / "cut.png"
    path.write_bytes(_png(gray8)[:120])
    with pytest.raises(ImageDecodeError, match="cut.png") as caught:
        decode(path)
    assert caught.value.kind == "corrupt"


def test_decompression_bomb_is_refused_before_decoding():
    with pytest.raises(ImageDecodeError, match="too large") as caught:
        decode(png_bomb())
    assert caught.value.kind == "too_large"


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(ImageDecodeError, match="nothing.png"):
        decode(tmp_path / "nothing.png")


def test_to_canonical_matches_the_file_decoder(gray8):
    deep = gray8.astype(np.uint16) * 257
    np.testing.assert_array_equal(np.asarray(to_canonical(deep)), gray8)
    np.testing.assert_array_equal(np.asarray(to_canonical(Image.fromarray(deep))), gray8)
    np.testing.assert_array_equal(np.asarray(to_canonical(np.dstack([gray8] * 3))), gray8)
    assert to_canonical(Image.fromarray(gray8)).mode == "L"


# ------------------------------------------------------------------------------------------ DICOM


@pytest.fixture
def stored12(gray8) -> np.ndarray:
    return np.round(gray8.astype(np.float64) / 255 * 4095).astype(np.uint16)


def test_dicom_monochrome1_decodes_like_its_monochrome2_twin(tmp_path, stored12, gray8):
    two = decode(write_dicom(tmp_path / "m2.dcm", stored12, BitsStored=12))
    one = decode(write_dicom(tmp_path / "m1.dcm", 4095 - stored12, "MONOCHROME1", BitsStored=12))
    assert (two.format, two.mode, two.bits) == ("DICOM", "MONOCHROME2", 12)
    assert one.mode == "MONOCHROME1"
    np.testing.assert_array_equal(np.asarray(one.image), np.asarray(two.image))
    assert np.abs(np.asarray(two.image).astype(int) - gray8).max() <= 1  # bone stays bright


def test_dicom_window_is_applied(tmp_path, stored12):
    # A window over the lower half of the values: everything above it is white.
    decoded = np.asarray(
        decode_image(write_dicom(tmp_path / "w.dcm", stored12, BitsStored=12, WindowCenter=1024, WindowWidth=2048))
    )
    assert (decoded[stored12 >= 2048] == 255).all()
    low = stored12 < 1000
    np.testing.assert_allclose(decoded[low], np.round((stored12[low] - 0.5) / 2047 * 255), atol=1)


def test_dicom_voi_lut_sequence_is_applied(tmp_path, stored12):
    from pydicom.dataset import Dataset

    lut = Dataset()
    lut.LUTDescriptor = [4096, 0, 16]
    curve = np.round(np.sqrt(np.arange(4096) / 4095) * 4095).astype("<u2")  # a gamma-like curve
    lut.add_new(0x00283006, "OW", curve.tobytes())  # LUT Data
    path = write_dicom(tmp_path / "lut.dcm", stored12, BitsStored=12)
    import pydicom

    ds = pydicom.dcmread(path)
    ds.VOILUTSequence = [lut]
    ds.WindowCenter, ds.WindowWidth = 100, 10  # the LUT wins over a window, as viewers do
    ds.save_as(path)
    decoded = np.asarray(decode_image(path)).astype(int)
    expected = np.round(np.sqrt(stored12 / 4095) * 255)
    assert np.abs(decoded - expected).max() <= 1


def test_dicom_rescale_without_window_uses_the_stored_range(tmp_path, stored12, gray8):
    decoded = decode_image(
        write_dicom(tmp_path / "r.dcm", stored12, BitsStored=12, RescaleSlope=2, RescaleIntercept=-1000)
    )
    assert np.abs(np.asarray(decoded).astype(int) - gray8).max() <= 1


def test_dicom_without_pixel_data_is_refused(tmp_path, stored12):
    path = write_dicom(tmp_path / "sr.dcm", stored12)
    import pydicom

    ds = pydicom.dcmread(path)
    del ds.PixelData
    ds.save_as(path)
    with pytest.raises(ImageDecodeError, match="without pixel data") as caught:
        decode(path)
    assert caught.value.kind == "no_pixel_data"


def test_dicom_with_an_undecodable_transfer_syntax_says_how_to_fix_it(tmp_path, stored12):
    import pydicom
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEG2000Lossless

    path = write_dicom(tmp_path / "j2k.dcm", stored12)
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
    ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + b"\x00" * 64])
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(ImageDecodeError, match="spine-hf\\[dicom\\]") as caught:
        decode(path)
    assert caught.value.kind == "codec"


def test_a_non_dicom_file_named_dcm_is_refused(tmp_path):
    path = tmp_path / "fake.dcm"
    path.write_text("not a dicom file at all")
    with pytest.raises(ImageDecodeError, match="fake.dcm"):
        decode(path)
