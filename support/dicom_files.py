"""DICOM files as modalities send them, for the tests and the benchmarks alike (``support/`` is on both's path:
pytest's ``pythonpath``, and each benchmark adds it)."""

import numpy as np
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

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
