"""Files made to hurt: each gets a one-line ImageReadError (never another exception), before it costs memory."""

import io
import os

import numpy as np
import pydicom
import pytest
from helpers import GRADIENT, hidden_deflate_bomb, make_dataset, make_dicom
from PIL import Image
from pydicom.uid import DeflatedExplicitVRLittleEndian

from ccad.errors import ImageReadError, ImageTooLargeError
from ccad.io.images import read_grayscale, read_grayscale_bytes


def test_a_deflate_bomb_is_refused_before_it_inflates(tmp_path):
    # 12 MB of zero pixels deflate to ~12 KB; header says 100 x 100, so only the bounded inflater can tell
    path = make_dataset(tmp_path / "bomb.dcm", 100, 100, bytes(12 * 2**20), DeflatedExplicitVRLittleEndian)
    data = path.read_bytes()
    assert len(data) < 100_000
    with pytest.raises(ImageTooLargeError, match="inflates past"):
        read_grayscale_bytes(data, "bomb.dcm", max_pixels=1_000_000)


@pytest.mark.parametrize("how", ["padded", "no group length"])
def test_a_deflate_bomb_cannot_hide_its_transfer_syntax_from_the_guard(tmp_path, how):
    data = hidden_deflate_bomb(tmp_path, how)
    assert len(data) < 100_000
    with pytest.raises(ImageTooLargeError, match="inflates past"):
        read_grayscale_bytes(data, "bomb.dcm", max_pixels=1_000_000)


def test_bytes_after_a_deflate_stream_do_not_hang_the_guard(tmp_path):
    """A deflated data set followed by padding (a sender's, or a hostile one): the bounded inflater once spun
    for ever on the bytes after the stream's end, which zlib leaves in unconsumed_tail."""
    import threading

    path = make_dataset(tmp_path / "padded.dcm", 1024, 1536, bytes(2 * 1024 * 1536), DeflatedExplicitVRLittleEndian)
    data = path.read_bytes() + b"junk after the stream"
    finished = []
    worker = threading.Thread(target=lambda: finished.append(_outcome(data)), daemon=True)
    worker.start()
    worker.join(60)  # a hang guard, not a timing: the read takes well under a second
    assert finished, "the bounded inflater did not return"
    assert finished[0] in ("read", "ImageReadError")


def _outcome(data: bytes) -> str:
    try:
        read_grayscale_bytes(data, "padded.dcm")
        return "read"
    except ImageReadError as e:
        return type(e).__name__ if not isinstance(e, ImageTooLargeError) else "too large"


def test_a_small_deflated_dicom_still_reads(tmp_path):
    pixels = (GRADIENT.astype(np.uint16) * 16).tobytes()
    path = make_dataset(tmp_path / "ok.dcm", 64, 64, pixels, DeflatedExplicitVRLittleEndian)
    assert read_grayscale(path).shape == (64, 64)


def test_non_finite_pixels_are_refused(tmp_path):
    values = GRADIENT.astype(np.float32)
    values[3, 3] = np.nan
    Image.fromarray(values, mode="F").save(tmp_path / "nan.tif")
    with pytest.raises(ImageReadError, match="non-finite"):
        read_grayscale(tmp_path / "nan.tif")
    huge = make_dicom(tmp_path / "slope.dcm", GRADIENT.astype(np.uint16) * 16, slope=1e308)
    with pytest.raises(ImageReadError, match="non-finite"):
        read_grayscale(huge)


def test_a_window_width_of_zero_is_ignored_not_a_crash(tmp_path):
    path = make_dicom(tmp_path / "w0.dcm", GRADIENT.astype(np.uint16) * 16, window=(100, 0))
    gray = read_grayscale(path)
    assert gray.min() == 0.0 and gray.max() == 1.0


def test_multiframe_colour_dicom_gives_the_first_frame(tmp_path):
    from pydicom.uid import ExplicitVRLittleEndian

    frames = np.zeros((2, 32, 32, 3), np.uint8)
    frames[0, :, 16:] = 200
    frames[1] = 255
    path = make_dataset(
        tmp_path / "rgb.dcm",
        32,
        32,
        frames.tobytes(),
        ExplicitVRLittleEndian,
        NumberOfFrames=2,
        SamplesPerPixel=3,
        PhotometricInterpretation="RGB",
        PlanarConfiguration=0,
        BitsAllocated=8,
        BitsStored=8,
        HighBit=7,
    )
    gray = read_grayscale(path)
    assert gray.shape == (32, 32) and gray[:, :16].max() == 0.0 and gray[:, 16:].min() == 1.0


def test_a_multiframe_dicom_decodes_only_the_frame_it_scores(tmp_path):
    """An RLE data set of 8 frames of 1024 x 1024 (16 MB of pixels, ~100 KB encoded): only frame 0 is decoded,
    so the memory a read takes is one frame's, not eight (the server kept ~590 MB a request of four 7000 x
    7000 frames)."""
    import tracemalloc

    from pydicom.encaps import encapsulate
    from pydicom.pixels.encoders import RLELosslessEncoder
    from pydicom.uid import RLELossless

    frames = np.zeros((8, 1024, 1024), np.uint16)
    frames[0, :, 512:] = 3000
    frames[1:] = 4000
    encoded = [
        RLELosslessEncoder.encode(
            frame,
            rows=1024,
            columns=1024,
            samples_per_pixel=1,
            bits_allocated=16,
            bits_stored=16,
            pixel_representation=0,
            photometric_interpretation="MONOCHROME2",
            number_of_frames=1,
        )
        for frame in frames
    ]
    path = make_dataset(tmp_path / "rle.dcm", 1024, 1024, encapsulate(encoded), RLELossless, NumberOfFrames=8)
    data = path.read_bytes()
    assert len(data) < 1_000_000
    tracemalloc.start()
    try:
        gray = read_grayscale_bytes(data, "rle.dcm")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert gray.shape == (1024, 1024) and gray[:, :512].max() == 0.0 and gray[:, 512:].min() == 1.0
    assert peak < 14 * 2**20, peak / 2**20  # all eight frames alone are 16 MB


@pytest.mark.parametrize(
    "content, name",
    [
        (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n", "x.png"),
        (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n", "x.eps"),
        (b"GIF89a" + bytes(200), "x.gif"),
        (b"<svg xmlns='http://www.w3.org/2000/svg'/>", "x.svg"),
    ],
)
def test_formats_outside_the_allow_list_are_never_decoded(tmp_path, content, name):
    with pytest.raises(ImageReadError, match="allowed: PNG, JPEG, TIFF, BMP or DICOM"):
        read_grayscale_bytes(content, name)
    (tmp_path / name).write_bytes(content)
    with pytest.raises(ImageReadError, match="allowed"):
        read_grayscale(tmp_path / name)


def test_a_png_under_another_name_is_read_by_its_bytes(tmp_path):
    buffer = io.BytesIO()
    Image.fromarray(GRADIENT).save(buffer, format="PNG")
    assert read_grayscale_bytes(buffer.getvalue(), "scan.eps").shape == (64, 64)


@pytest.mark.parametrize("array", [np.full((64, 64), 255, np.uint8), np.full((64, 64), 4000, np.uint16)])
def test_blank_images_are_refused(tmp_path, array):
    Image.fromarray(array).save(tmp_path / "blank.png")
    with pytest.raises(ImageReadError, match="blank image"):
        read_grayscale(tmp_path / "blank.png")


def test_what_a_path_is_when_it_is_not_an_image_file(tmp_path):
    os.mkfifo(tmp_path / "fifo.png")
    with pytest.raises(ImageReadError, match="not a regular file"):
        read_grayscale(tmp_path / "fifo.png")
    os.symlink(tmp_path / "loop-b.png", tmp_path / "loop-a.png")
    os.symlink(tmp_path / "loop-a.png", tmp_path / "loop-b.png")
    with pytest.raises(ImageReadError, match="cannot be opened"):
        read_grayscale(tmp_path / "loop-a.png")
    with pytest.raises(ImageReadError, match="is a folder"):
        read_grayscale(tmp_path)
    with pytest.raises(ImageReadError, match="NUL byte"):
        read_grayscale(str(tmp_path / "a\0b.png"))


def test_an_unreadable_file_says_permission_denied(tmp_path, monkeypatch):
    from helpers import as_unprivileged

    as_unprivileged(monkeypatch)  # root reads every file whatever its mode: see it as a user would
    Image.fromarray(GRADIENT).save(tmp_path / "secret.png")
    (tmp_path / "secret.png").chmod(0)
    with pytest.raises(ImageReadError, match="permission denied"):
        read_grayscale(tmp_path / "secret.png")


def test_a_tiny_image_is_not_an_x_ray(tmp_path):
    Image.fromarray(GRADIENT[:8, :8]).save(tmp_path / "tiny.png")
    with pytest.raises(ImageReadError, match="too small"):
        read_grayscale(tmp_path / "tiny.png")


def test_deflated_stream_that_is_not_deflate_is_a_read_error(tmp_path):
    path = make_dataset(
        tmp_path / "ok.dcm", 64, 64, (GRADIENT.astype(np.uint16)).tobytes(), DeflatedExplicitVRLittleEndian
    )
    data = bytearray(path.read_bytes())
    tail = 144 + int.from_bytes(data[140:144], "little")
    data[tail : tail + 64] = os.urandom(64)
    with pytest.raises(ImageReadError):
        read_grayscale_bytes(bytes(data), "broken.dcm")


def test_a_folder_that_cannot_be_listed_is_yielded_to_get_its_error_row(tmp_path, monkeypatch):
    """os.walk reports an unlistable subfolder to its onerror; iter_inputs passes it on instead of dropping it."""
    import ccad.io.images as images
    import ccad.io.inputs as inputs

    Image.fromarray(GRADIENT).save(tmp_path / "a.png")
    (tmp_path / "locked").mkdir()

    def walk(top, onerror=None):
        yield str(tmp_path), ["locked"], ["a.png"]
        onerror(PermissionError(13, "Permission denied", str(tmp_path / "locked")))

    monkeypatch.setattr(inputs.os, "walk", walk)
    found = list(inputs.iter_inputs([tmp_path]))
    assert found == [tmp_path / "a.png", tmp_path / "locked"]
    monkeypatch.setattr(images.os, "access", lambda path, mode: "locked" not in str(path))
    with pytest.raises(ImageReadError, match="cannot be listed \\(permission denied\\)"):
        read_grayscale(found[1])


def test_a_newline_in_a_file_name_does_not_break_the_csv(tmp_path, run_and_bundle):
    import csv

    from ccad.cli import main

    odd = tmp_path / "scan\nnext.png"
    Image.fromarray(GRADIENT).save(odd)
    out = tmp_path / "p.csv"
    assert main(["predict", "--model", str(run_and_bundle[1]), str(odd), "--out", str(out)]) == 0
    assert main(["predict", "--model", str(run_and_bundle[1]), str(odd), "--out", str(out), "--resume"]) == 0
    rows = list(csv.DictReader(open(out, newline="")))
    assert [r["file"] for r in rows] == [str(odd)]


def test_zero_padding_after_the_pixel_data_is_refused_before_pydicom_parses_it(tmp_path):
    """190 MB of zeros after the pixel data (deflated, 311 KB) kept the only scoring worker busy two minutes:
    pydicom parsed it as 31 million empty elements. Both forms are refused from a walk over the headers."""
    import zlib

    from helpers import make_xray_dicom

    from ccad.io.dicomfile import MAX_ELEMENTS, file_meta
    from ccad.io.images import read_grayscale_bytes

    plain = make_xray_dicom(tmp_path / "x.dcm", np.random.default_rng(0).random((64, 64))).read_bytes()
    padded = plain + bytes(64 * 2**20)
    with pytest.raises(ImageTooLargeError, match=r"64\.0 MB outside its pixel data"):
        read_grayscale_bytes(padded, "padded.dcm")
    ds = pydicom.dcmread(io.BytesIO(plain))
    ds.file_meta.TransferSyntaxUID = pydicom.uid.DeflatedExplicitVRLittleEndian
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    _, at = file_meta(buffer.getvalue(), "x")
    body = zlib.decompress(buffer.getvalue()[at:], -zlib.MAX_WBITS) + bytes(64 * 2**20)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    deflated = buffer.getvalue()[:at] + compressor.compress(body) + compressor.flush()
    assert len(deflated) < 2**20
    with pytest.raises(ImageTooLargeError, match="outside its pixel data"):
        read_grayscale_bytes(deflated, "deflated.dcm")
    _, at = file_meta(plain, "x")
    before = plain[:at] + bytes(8 * (MAX_ELEMENTS + 10)) + plain[at:]  # a million empty elements first
    with pytest.raises(ImageTooLargeError, match="more than 100,000 elements"):
        read_grayscale_bytes(before, "before.dcm")
    # the zeros inside a sequence of undefined length (one top-level element), and without the preamble
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    ds = pydicom.dcmread(io.BytesIO(plain))
    item = Dataset()
    item.add_new(0x00091010, "OB", bytes(16 * 2**20))  # a private blob in an item: 16 MB
    ds.ReferencedImageSequence = Sequence([item])
    ds["ReferencedImageSequence"].is_undefined_length = True
    nested = io.BytesIO()
    ds.save_as(nested, enforce_file_format=True)
    with pytest.raises(ImageTooLargeError, match=r"16\.0 MB outside its pixel data"):
        read_grayscale_bytes(nested.getvalue(), "nested.dcm")
    _, at = file_meta(plain, "x")
    bare = plain[at:] + bytes(16 * 2**20)  # the data set alone (explicit VR), no preamble nor meta group
    with pytest.raises(ImageTooLargeError, match="outside its pixel data"):
        read_grayscale_bytes(bare, "bare.dcm")
