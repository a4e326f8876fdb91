"""Helpers the tests share (tests/ is on the path: ``from helpers import make_dicom``)."""

import numpy as np
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

GRADIENT = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (64, 1))  # 64x64, columns 0..252


def make_dicom(path, pixels, photometric="MONOCHROME2", slope=1.0, intercept=0.0, window=None):
    """A 12-bit DX image with a patient name, a modality rescale and optionally a VOI window."""
    fields = dict(
        PatientName="Test^Patient",
        Modality="DX",
        PhotometricInterpretation=photometric,
        BitsStored=12,
        HighBit=11,
        RescaleSlope=slope,
        RescaleIntercept=intercept,
    )
    if window:
        fields.update(WindowCenter=window[0], WindowWidth=window[1])
    return make_dataset(path, *pixels.shape, pixels.astype(np.uint16).tobytes(), ExplicitVRLittleEndian, **fields)


def make_dataset(path, rows, cols, pixels: bytes, syntax, **fields):
    """A 16-bit MONOCHROME2 DICOM of ``rows x cols`` in its header with whatever ``pixels`` and transfer syntax."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = rows, cols, 16, 16, 15, 0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    for key, value in fields.items():
        setattr(ds, key, value)
    ds.PixelData = pixels
    ds.save_as(path, enforce_file_format=True)
    return path


def png_bytes(size=(96, 96), mode="L", seed=0) -> bytes:
    """A noise PNG (never blank) of ``size``."""
    import io

    from PIL import Image

    array = np.random.default_rng(seed).integers(0, 255, (size[1], size[0]), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).convert(mode).save(buffer, format="PNG")
    return buffer.getvalue()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


#: The patient of every test X-ray sent over DICOM: it must never appear in ccad's logs.
PATIENT = {"PatientName": "Doe^Jane^Q", "PatientID": "PID-7431-ZX"}


def make_xray_dicom(
    path,
    gray: np.ndarray,
    study_uid: str | None = None,
    syntax=ExplicitVRLittleEndian,
    sop_class="1.2.840.10008.5.1.4.1.1.1.1",
    photometric="MONOCHROME2",
    **fields,
):
    """A frontal chest DX (For Presentation) of ``gray`` (H, W) in [0, 1], 12-bit, with a patient and a study
    as a modality would send it; ``fields`` override any attribute (e.g. ``ViewPosition="LL"``)."""
    pixels = np.round(np.asarray(gray, np.float64) * 4095).astype(np.uint16)
    if photometric == "MONOCHROME1":
        pixels = 4095 - pixels
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    values = dict(
        PATIENT,
        PatientBirthDate="19600101",
        PatientSex="F",
        StudyInstanceUID=study_uid or generate_uid(),
        SeriesInstanceUID=generate_uid(),
        StudyID="1",
        AccessionNumber="ACC123",
        StudyDate="20261126",
        StudyTime="101500",
        ReferringPhysicianName="",
        SeriesNumber=1,
        InstanceNumber=1,
        Modality="DX",
        BodyPartExamined="CHEST",
        ViewPosition="PA",
        PresentationIntentType="FOR PRESENTATION",
        Manufacturer="test",
        PatientOrientation=["L", "F"],
        ImageType=["ORIGINAL", "PRIMARY"],
        Rows=pixels.shape[0],
        Columns=pixels.shape[1],
        BitsAllocated=16,
        BitsStored=12,
        HighBit=11,
        PixelRepresentation=0,
        SamplesPerPixel=1,
        PhotometricInterpretation=photometric,
        PixelData=pixels.tobytes(),
    )
    values.update(fields)
    for key, value in values.items():
        if value is None:
            if key in ds:
                delattr(ds, key)
            continue
        setattr(ds, key, value)
    ds.save_as(path, enforce_file_format=True)
    return path


def hidden_deflate_bomb(tmp_path, how: str) -> bytes:
    """A deflate bomb whose file meta group hides what byte offsets looked for: the transfer syntax UID
    pushed past byte 1024 by a padded MediaStorageSOPClassUID, or no (0002,0000) group length."""
    import io

    import pydicom
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    path = make_dataset(tmp_path / f"{how}.dcm", 100, 100, bytes(12 * 2**20), DeflatedExplicitVRLittleEndian)
    ds = pydicom.dcmread(path)
    if how == "padded":
        ds.file_meta.MediaStorageSOPClassUID = "1.2." + "3." * 500 + "4"
    else:
        del ds.file_meta[0x00020000]
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=False)
    data = buffer.getvalue()
    if how == "padded":
        assert data.find(DeflatedExplicitVRLittleEndian.encode()) > 1024
    else:
        if data[132:138] == b"\x02\x00\x00\x00UL":  # pydicom wrote the group length back: cut it out
            data = data[:132] + data[144:]
        assert b"\x02\x00\x00\x00UL" not in data[:200]
    return data


def as_unprivileged(monkeypatch) -> None:
    """Make this process see file modes as a user without privileges would, also when the tests run as root
    (as here and in CI, where root reads and lists everything): ``os.access`` honours the mode bits and
    ``os.scandir`` refuses a folder without read and execute bits, as the kernel does for other users."""
    import os
    import stat

    if os.geteuid() != 0:
        return
    real_access, real_scandir = os.access, os.scandir

    def access(path, mode, *args, **kwargs):
        bits = stat.S_IMODE(os.stat(path).st_mode)
        for flag, mask in ((os.R_OK, 0o444), (os.W_OK, 0o222), (os.X_OK, 0o111)):
            if mode & flag and not bits & mask:
                return False
        return real_access(path, mode, *args, **kwargs)

    def scandir(path="."):
        if not isinstance(path, int) and (stat.S_IMODE(os.stat(path).st_mode) & 0o555) != 0o555:
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "access", access)
    monkeypatch.setattr(os, "scandir", scandir)
