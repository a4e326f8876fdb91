"""DICOM as modalities send it (ccad.io.dicom): files made by real encoders (dcmtk, GDCM) decode to the same
pixels, a codestream that says more than its header is refused before decoding, pydicom's shipped files of
other modalities are not scored (and decode when scored anyway), every refusal is said in words."""

import struct
from pathlib import Path

import numpy as np
import pydicom
import pytest
from helpers import make_xray_dicom
from real_dicom import DCMTK, ENCODERS, GDCM, LOSSLESS, encode, pydicom_file

from ccad.data.synthetic import render_patient
from ccad.errors import ImageReadError, ImageTooLargeError, NotScoredError
from ccad.io import dicom
from ccad.io.images import read_grayscale, read_grayscale_bytes

needs_dcmtk = pytest.mark.skipif(DCMTK is None, reason="dcmtk is not installed (apt-get install dcmtk; .ci/run does)")
needs_gdcm = pytest.mark.skipif(
    GDCM is None, reason="GDCM's tools are not installed (apt-get install libgdcm-tools; .ci/run does)"
)


@pytest.fixture(scope="module")
def uncompressed(tmp_path_factory) -> Path:
    """A 12-bit frontal chest DX, 320 x 256, as a modality sends it uncompressed."""
    gray = render_patient(np.random.default_rng(3), "covid", 320)[:256]
    return make_xray_dicom(tmp_path_factory.mktemp("dx") / "dx.dcm", gray)


def _needs(syntax: str):
    tool = ENCODERS[syntax][0]
    return needs_gdcm if tool == "gdcmconv" else needs_dcmtk


@pytest.mark.parametrize("syntax", [pytest.param(s, marks=_needs(s), id=dicom.syntax_name(s)) for s in ENCODERS])
def test_a_file_from_a_real_encoder_decodes_to_the_same_image(syntax, uncompressed, tmp_path):
    encoded = encode(uncompressed, tmp_path / "encoded.dcm", syntax)
    assert syntax in dicom.supported_syntaxes()  # what decodes is what the listener negotiates
    expected, got = read_grayscale(uncompressed), read_grayscale(encoded)
    assert got.shape == expected.shape
    if syntax in LOSSLESS:
        np.testing.assert_array_equal(got, expected)
    else:  # JPEG extended (lossy, 12 bits) and JPEG-LS near-lossless: within a few grey levels of 4096
        assert np.abs(got - expected).max() < 0.01


def test_every_syntax_in_the_table_has_a_decoder_in_the_dev_install():
    # JPEG extended 12-bit is the jpeg12 extra (GPLv3 libjpeg), which the dev install has
    assert dicom.supported_syntaxes() == [syntax.uid for syntax in dicom.SYNTAXES]


def test_a_syntax_without_a_decoder_is_not_negotiated(monkeypatch):
    sv1 = "1.2.840.10008.1.2.4.70"
    monkeypatch.setattr(dicom, "BY_UID", {**dicom.BY_UID, sv1: dicom.Syntax(sv1, "x", ("none",))})
    assert sv1 not in dicom.supported_syntaxes()
    assert dicom.decoding_plugin("1.2.3.4") is None  # a syntax ccad does not know


# -- a codestream that lies about its size ----------------------------------------------------------------

BOMB_SIDE = 20000


def _lie(ds, marker: bytes, offsets: tuple[int, int], fmt: str) -> None:
    """Write BOMB_SIDE into the codestream's own header (after ``marker``) at ``offsets`` (height, width)."""
    data = bytearray(ds.PixelData)
    at = data.index(marker)
    for offset in offsets:
        struct.pack_into(fmt, data, at + offset, BOMB_SIDE)
    ds.PixelData = bytes(data)


BOMBS = {  # syntax: (marker, offsets of the height and the width, their format)
    "1.2.840.10008.1.2.4.70": (b"\xff\xc3", (5, 7), ">H"),  # JPEG SOF3: Lf, P, Y, X
    "1.2.840.10008.1.2.4.80": (b"\xff\xf7", (5, 7), ">H"),  # JPEG-LS SOF55
    "1.2.840.10008.1.2.4.90": (b"\xff\x51", (6, 10), ">I"),  # JPEG 2000 SIZ: Lsiz, Rsiz, Xsiz, Ysiz
}


@pytest.mark.parametrize("syntax", [pytest.param(s, marks=_needs(s), id=dicom.syntax_name(s)) for s in BOMBS])
def test_a_codestream_larger_than_its_header_is_refused_before_decoding(syntax, uncompressed, tmp_path, monkeypatch):
    ds = pydicom.dcmread(encode(uncompressed, tmp_path / "encoded.dcm", syntax))
    _lie(ds, *BOMBS[syntax])
    ds.save_as(tmp_path / "bomb.dcm")

    def no_decoding(*args, **kwargs):
        raise AssertionError("a decoder was called")

    monkeypatch.setattr(pydicom.Dataset, "pixel_array_options", no_decoding)
    with pytest.raises(ImageTooLargeError, match="compressed data larger than its header says"):
        read_grayscale(tmp_path / "bomb.dcm")


@needs_dcmtk
def test_rle_with_a_wrong_segment_count_and_a_codestream_of_another_size_are_refused(uncompressed, tmp_path):
    ds = pydicom.dcmread(encode(uncompressed, tmp_path / "rle.dcm", "1.2.840.10008.1.2.5"))
    data = bytearray(ds.PixelData)
    at = data.index(b"\xfe\xff\x00\xe0", 8) + 8  # the first fragment, after the empty offset table
    struct.pack_into("<I", data, at, 15)
    ds.PixelData = bytes(data)
    ds.save_as(tmp_path / "bad.dcm")
    with pytest.raises(ImageReadError, match="RLE data with 15 segments, not the 2 its header says"):
        read_grayscale(tmp_path / "bad.dcm")
    smaller = pydicom.dcmread(encode(uncompressed, tmp_path / "jls.dcm", "1.2.840.10008.1.2.4.80"))
    smaller.Rows = smaller.Rows + 8  # the header says more than the codestream holds
    smaller.save_as(tmp_path / "other.dcm")
    with pytest.raises(ImageReadError, match="does not match its header"):
        read_grayscale(tmp_path / "other.dcm")


# -- what is scored, and errors in words -----------------------------------------------------------------


@pytest.mark.parametrize(
    "name, reason",
    [
        ("MR_small.dcm", "SOP class MR Image Storage is not CR, DX or Secondary Capture"),
        ("CT_small.dcm", "SOP class CT Image Storage is not CR, DX or Secondary Capture"),
        ("SC_rgb_rle.dcm", "a Secondary Capture of modality OT, not a radiograph"),
        ("JPEG2000.dcm", "a Secondary Capture of modality NM, not a radiograph"),
        ("rtplan.dcm", "no pixel data"),
    ],
)
def test_pydicoms_own_files_of_other_modalities_are_not_scored(name, reason):
    with pytest.raises(NotScoredError, match=reason):
        read_grayscale(pydicom_file(name), admit=True)


MR_VARIANTS = ["MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm",
               "MR_small_bigendian.dcm", "MR_small_implicit.dcm", "MR_small_expb.dcm"]  # fmt: skip


@pytest.mark.parametrize("variant", MR_VARIANTS)
def test_scored_anyway_pydicoms_files_decode_in_every_syntax_to_the_same_pixels(variant):
    expected = read_grayscale(pydicom_file("MR_small.dcm"), admit=False)
    np.testing.assert_array_equal(read_grayscale(pydicom_file(variant), admit=False), expected)


def test_every_pydicom_image_file_is_decoded_or_refused_in_one_line():
    for path in sorted(pydicom_file("x").parent.glob("*.dcm")):
        try:
            read_grayscale(path, admit=False)
        except ImageReadError as e:
            text = str(e)
            assert "\n" not in text and "Error" not in text and "(" + type(e.__cause__).__name__ + ")" not in text, text


def test_errors_say_what_happened_not_an_exception_type(uncompressed, tmp_path):
    ds = pydicom.dcmread(uncompressed)
    del ds.PixelData
    with pytest.raises(NotScoredError, match=r"^x\.dcm: no pixel data$"):
        read_grayscale_bytes(_bytes(ds), "x.dcm", admit=True)
    with pytest.raises(ImageReadError, match="no pixel data$"):
        read_grayscale_bytes(_bytes(ds), "x.dcm")  # training and audits read what they are given
    truncated = uncompressed.read_bytes()[:2000]
    with pytest.raises(ImageReadError, match=r"^x\.dcm: its pixel data is shorter than its header says$"):
        read_grayscale_bytes(truncated, "x.dcm")
    with pytest.raises(ImageReadError, match=r"^x\.dcm: no pixel data$"):  # cut before its pixels
        read_grayscale_bytes(uncompressed.read_bytes()[:300], "x.dcm")


@needs_gdcm
def test_a_codestream_that_cannot_be_decoded_is_named_by_its_syntax(uncompressed, tmp_path):
    from pydicom.encaps import encapsulate, generate_frames

    ds = pydicom.dcmread(encode(uncompressed, tmp_path / "j2k.dcm", "1.2.840.10008.1.2.4.90"))
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    ds.PixelData = encapsulate([frame[:2000] + b"\xff\xd9"])  # cut short after its header
    with pytest.raises(ImageReadError, match=r"^x\.dcm: JPEG 2000 Lossless data could not be decoded$"):
        read_grayscale_bytes(_bytes(ds), "x.dcm")


def test_the_admission_rule():
    from pydicom.dataset import Dataset

    def ds(**fields):
        d = Dataset()
        d.PixelData = b"\0\0"
        d.SOPClassUID = dicom.DX_PRESENTATION_STORAGE
        d.Modality = "DX"
        for key, value in fields.items():
            setattr(d, key, value)
        return d

    assert dicom.not_scored_reason(ds()) is None
    assert dicom.not_scored_reason(ds(SOPClassUID=dicom.CR_STORAGE, Modality="CR", BodyPartExamined="CHEST")) is None
    assert dicom.not_scored_reason(ds(SOPClassUID=dicom.SECONDARY_CAPTURE_STORAGE, Modality="CR")) is None
    assert "Secondary Capture of modality OT" in dicom.not_scored_reason(
        ds(SOPClassUID=dicom.SECONDARY_CAPTURE_STORAGE, Modality="OT")
    )
    assert "for processing" in dicom.not_scored_reason(ds(SOPClassUID=dicom.DX_PROCESSING_STORAGE))
    assert "for processing" in dicom.not_scored_reason(ds(PresentationIntentType="FOR PROCESSING"))
    assert "not chest" in dicom.not_scored_reason(ds(BodyPartExamined="HIP"))
    assert "lateral" in dicom.not_scored_reason(ds(ViewPosition="LL"))
    assert "modality MG" in dicom.not_scored_reason(ds(Modality="MG"))
    assert "SOP class 1.2.3.4 is not CR" in dicom.not_scored_reason(ds(SOPClassUID="1.2.3.4"))


def _bytes(ds) -> bytes:
    import io

    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


# -- decoding what the model needs --------------------------------------------------------------------


def test_how_many_levels_a_jpeg2000_image_may_skip():
    assert dicom.reduction(2128, 2000, 512) == 1  # 1000 px; two levels would leave 500
    assert dicom.reduction(4000, 4096, 512) == 2
    assert dicom.reduction(1000, 1000, 512) == 0


@needs_gdcm
def test_a_jpeg2000_film_decodes_a_level_down_only_when_asked(tmp_path):
    gray = render_patient(np.random.default_rng(4), "covid", 1100)
    path = encode(make_xray_dicom(tmp_path / "x.dcm", gray), tmp_path / "j2k.dcm", "1.2.840.10008.1.2.4.90")
    full, reduced = read_grayscale(path), read_grayscale(path, min_side=512)
    assert full.shape == (1100, 1100) and reduced.shape == (550, 550)
    averaged = full.reshape(550, 2, 550, 2).mean(axis=(1, 3))  # the wavelet's low-pass band is close to this
    assert np.corrcoef(reduced.ravel(), averaged.ravel())[0, 1] > 0.99  # the same image, half the size
    assert np.abs(reduced - averaged).mean() < 0.03  # each windowed to its own range
    assert read_grayscale(path, min_side=600).shape == full.shape  # 550 < 600: nothing to skip


def test_a_12_bit_jpeg2000_codestream_decoded_a_level_down_keeps_its_stored_values(tmp_path):
    """Pillow widens 12-bit samples to 16 bits (x16); the reduced decode shifts them back, so the modality and
    VOI LUTs apply to stored values as in a full decode."""
    from openjpeg.utils import encode_array
    from pydicom.encaps import encapsulate

    stored = (render_patient(np.random.default_rng(6), "covid", 1100) * 4095).astype(np.uint16)
    ds = pydicom.dcmread(make_xray_dicom(tmp_path / "x.dcm", stored / 4095))
    ds.PixelData = encapsulate([encode_array(ds.pixel_array, bits_stored=12)])
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.90"
    assert dicom.codestream_header("1.2.840.10008.1.2.4.90", dicom.first_frame(ds))["precision"] == 12
    reduced = dicom.decode_reduced(ds, 512)
    assert reduced.shape == (550, 550) and reduced.max() <= 4095
    averaged = ds.pixel_array.reshape(550, 2, 550, 2).mean(axis=(1, 3))
    assert abs(reduced.mean() - averaged.mean()) < 0.01 * 4096  # the same scale (unshifted: 16 times it)
    assert np.corrcoef(reduced.ravel(), averaged.ravel())[0, 1] > 0.95
