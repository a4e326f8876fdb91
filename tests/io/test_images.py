import numpy as np
import pytest
from helpers import GRADIENT, make_dicom
from PIL import Image

from ccad.errors import ImageReadError
from ccad.io import images
from ccad.io.pixels import validate_pixels
from ccad.preprocessing.pipeline import load_model_input


def save(tmp_path, name, array, mode=None):
    path = tmp_path / name
    Image.fromarray(array, mode=mode).save(path)
    return path


def test_8bit_png_is_divided_by_255(tmp_path):
    gray = images.read_grayscale(save(tmp_path, "a.png", GRADIENT))
    assert gray.dtype == np.float32 and gray.shape == (64, 64)
    np.testing.assert_allclose(gray[0, :3], [0, 4 / 255, 8 / 255], atol=1e-6)


def test_16bit_png_is_windowed_to_its_range(tmp_path):
    deep = (GRADIENT.astype(np.uint16) * 16 + 100).astype(np.uint16)  # 12-bit data in 16 bits
    path = tmp_path / "deep.png"
    Image.fromarray(deep).save(path)
    assert Image.open(path).mode.startswith("I")
    gray = images.read_grayscale(path)
    assert gray.min() == 0.0 and gray.max() == 1.0
    np.testing.assert_allclose(gray[0, 1], 4 / 252, atol=1e-5)


def test_rgba_and_rgb_become_gray(tmp_path):
    rgba = np.dstack([GRADIENT, GRADIENT, GRADIENT, np.full_like(GRADIENT, 255)])
    gray = images.read_grayscale(save(tmp_path, "rgba.png", rgba, "RGBA"))
    np.testing.assert_allclose(gray[0, 1], 4 / 255, atol=1e-6)


@pytest.mark.parametrize("suffix", [".jpg", ".bmp", ".tif"])
def test_other_raster_formats(tmp_path, suffix):
    gray = images.read_grayscale(save(tmp_path, f"x{suffix}", GRADIENT))
    assert gray.shape == (64, 64)
    assert abs(float(gray[:, -1].mean()) - 252 / 255) < 0.03


def test_dicom_monochrome2_and_monochrome1_are_mirror_images(tmp_path):
    pixels = GRADIENT.astype(np.uint16) * 16
    mono2 = images.read_grayscale(make_dicom(tmp_path / "m2.dcm", pixels))
    mono1 = images.read_grayscale(make_dicom(tmp_path / "m1.dcm", pixels, "MONOCHROME1"))
    assert mono2[0, 0] == 0.0 and mono2[0, -1] == 1.0  # dark left, bright right
    np.testing.assert_allclose(mono1, 1.0 - mono2, atol=1e-6)


def test_dicom_voi_window_is_applied(tmp_path):
    pixels = GRADIENT.astype(np.uint16) * 16  # 0..4032
    # a narrow window around the middle saturates both ends
    gray = images.read_grayscale(make_dicom(tmp_path / "w.dcm", pixels, slope=1.0, intercept=0.0, window=(2000, 400)))
    assert (gray[0, :20] == 0).all() and (gray[0, -20:] == 1).all()


def test_dicom_without_suffix_is_recognised(tmp_path):
    path = make_dicom(tmp_path / "noext", GRADIENT.astype(np.uint16))
    assert images.is_dicom(path)
    assert images.read_grayscale(path).shape == (64, 64)


def test_truncated_dicom_is_a_clear_error(tmp_path):
    path = make_dicom(tmp_path / "t.dcm", GRADIENT.astype(np.uint16))
    path.write_bytes(path.read_bytes()[:-3000])
    with pytest.raises(ImageReadError, match="t.dcm"):
        images.read_grayscale(path)


@pytest.mark.parametrize(
    "content,match",
    [
        (b"this is not an image", "not a readable image"),
        (b"", "not a readable image"),
    ],
)
def test_non_image_files_are_clear_errors(tmp_path, content, match):
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    with pytest.raises(ImageReadError, match=match):
        images.read_grayscale(path)


def test_truncated_png_is_a_clear_error(tmp_path):
    path = save(tmp_path, "full.png", np.random.default_rng(0).integers(0, 255, (256, 256), dtype=np.uint8))
    cut = tmp_path / "cut.png"
    cut.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(ImageReadError, match="cut.png"):
        images.read_grayscale(cut)


def test_huge_image_is_refused_before_decoding(tmp_path, monkeypatch):
    path = save(tmp_path, "big.png", np.zeros((300, 300), np.uint8))
    monkeypatch.setattr(images, "MAX_PIXELS", 300 * 299)
    with pytest.raises(ImageReadError, match="over the limit"):
        images.read_grayscale(path)


def test_missing_file(tmp_path):
    with pytest.raises(ImageReadError, match="no such file"):
        images.read_grayscale(tmp_path / "nope.png")


def test_model_input_shape_range_and_channels(tmp_path):
    x = load_model_input(save(tmp_path, "a.png", GRADIENT), 32)
    assert x.shape == (32, 32, 3) and x.dtype == np.float32
    assert 0.0 <= x.min() and x.max() <= 1.0
    np.testing.assert_array_equal(x[..., 0], x[..., 2])


@pytest.mark.parametrize("dtype", [np.uint16, np.int16, np.int32])
def test_integer_pixels_are_windowed_as_their_float32_values_would_be(dtype):
    rng = np.random.default_rng(3)
    info = np.iinfo(dtype)
    pixels = rng.integers(max(info.min, -(2**30)), min(info.max, 2**30), size=(40, 50)).astype(dtype)
    windowed = validate_pixels((pixels, True), "x")
    expected = pixels.astype(np.float32)
    expected = (expected - expected.min()) / (expected.max() - expected.min())
    assert windowed.dtype == np.float32 and windowed.min() == 0.0 and windowed.max() == 1.0
    np.testing.assert_array_equal(windowed, expected.astype(np.float32))


def test_32_bit_integers_are_windowed_and_refused_as_blank_by_their_float32_values():
    one_high = np.ones((40, 50), np.int32)
    one_high[3, 4] = 2**25 + 3  # rounds to 2**25 + 4 in float32
    windowed = validate_pixels((one_high, True), "x")
    assert windowed.max() == 1.0 and windowed[3, 4] == 1.0
    two_values = np.full((40, 50), 2**24, np.int32)
    two_values[0, 0] = 2**24 + 1  # the same float32 as 2**24: blank, as its float32 pixels are
    with pytest.raises(ImageReadError, match="blank image"):
        validate_pixels((two_values, True), "x")


def _header_only(columns_value: bytes) -> bytes:
    """A DICOM file with no pixel data whose last element, Columns (US), holds ``columns_value`` as it is."""
    import io

    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds = FileDataset("x", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.Rows, ds.Columns = "DX", 64, 64
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    data = out.getvalue()
    head = b"\x28\x00\x11\x00US\x02\x00\x40\x00"
    assert data.endswith(head)  # Columns is the last element
    return data[: -len(head)] + b"\x28\x00\x11\x00US" + len(columns_value).to_bytes(2, "little") + columns_value


@pytest.mark.parametrize("columns", [b"\x40\x00\x40\x00", b"\x40\x00\x01"], ids=["two values", "an odd length"])
def test_a_dicom_header_whose_columns_is_not_one_number_is_a_read_error_not_a_crash(columns):
    with pytest.raises(ImageReadError, match="Rows or Columns is not one number"):
        images.image_header(_header_only(columns), "x.dcm")
    assert images.image_header(_header_only(b"\x40\x00"), "x.dcm")[:2] == (64, 64)
