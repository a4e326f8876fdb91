"""DICOM made by real tools, for the tests and the benchmarks: dcmtk's and GDCM's encoders (Debian's
``dcmtk`` and ``libgdcm-tools``), pydicom's shipped test and character-set files, and dicom3tools' validator.

Debian's binaries are called by their full path: the Python packages install commands of the same names
(pynetdicom's ``storescu``, python-gdcm's ``gdcmconv``) that would shadow them on ``PATH``.
"""

import os
import re
import subprocess
from pathlib import Path

import pydicom
from pydicom.uid import ExplicitVRLittleEndian, generate_uid


def debian_tool(name: str) -> str | None:
    """``/usr/bin/NAME`` when Debian's package installed it, else None."""
    path = Path("/usr/bin") / name
    return str(path) if path.is_file() and os.access(path, os.X_OK) else None


DCMTK = debian_tool("dcmcjpeg")
GDCM = debian_tool("gdcmconv")
DCIODVFY = debian_tool("dciodvfy")
STORESCU = debian_tool("storescu")

#: How each transfer syntax is made from an uncompressed file: (tool, arguments) with ``{src}`` and ``{dst}``.
ENCODERS = {
    "1.2.840.10008.1.2.4.70": ("dcmcjpeg", ["+e1", "{src}", "{dst}"]),  # JPEG lossless SV1
    "1.2.840.10008.1.2.4.57": ("dcmcjpeg", ["+el", "{src}", "{dst}"]),  # JPEG lossless
    "1.2.840.10008.1.2.4.51": ("dcmcjpeg", ["+ee", "{src}", "{dst}"]),  # JPEG extended 12-bit
    "1.2.840.10008.1.2.4.80": ("dcmcjpls", ["+el", "{src}", "{dst}"]),  # JPEG-LS lossless
    "1.2.840.10008.1.2.4.81": ("dcmcjpls", ["+en", "{src}", "{dst}"]),  # JPEG-LS near-lossless
    "1.2.840.10008.1.2.5": ("dcmcrle", ["{src}", "{dst}"]),  # RLE
    "1.2.840.10008.1.2.4.90": ("gdcmconv", ["--j2k", "{src}", "{dst}"]),  # JPEG 2000 lossless
    "1.2.840.10008.1.2.1.99": ("dcmconv", ["+td", "{src}", "{dst}"]),  # deflated
    "1.2.840.10008.1.2.2": ("dcmconv", ["+tb", "{src}", "{dst}"]),  # big endian
}
LOSSLESS = {"1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.5",
            "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.2"}  # fmt: skip


def encode(src: Path, dst: Path, syntax: str) -> Path:
    """``src`` (uncompressed) re-encoded in ``syntax`` by dcmtk or GDCM; checks the result's syntax."""
    tool, arguments = ENCODERS[syntax]
    command = [debian_tool(tool) or tool, *(a.format(src=src, dst=dst) for a in arguments)]
    subprocess.run(command, check=True, capture_output=True, timeout=120)
    written = pydicom.dcmread(dst, stop_before_pixels=True).file_meta.TransferSyntaxUID
    assert written == syntax, f"{tool} wrote {written}, not {syntax}"
    return dst


def pydicom_file(name: str) -> Path:
    """One of the test files pydicom ships (``pydicom/data/test_files``; nothing is downloaded)."""
    return Path(pydicom.__file__).parent / "data" / "test_files" / name


CHARSET_FILES = ["chrRuss", "chrJapMulti", "chrKoreanMulti", "chrGerm", "chrGreek", "chrArab", "chrHbrw", "chrFren",
                 "chrH31", "chrX1"]  # fmt: skip


def charset_xray(name: str, xray: Path, out: Path) -> Path:
    """pydicom's character-set file ``name`` (its patient name in Russian, Japanese, Korean, German, ...
    under its own SpecificCharacterSet) made a frontal chest DX with the pixels of ``xray``, new UIDs."""
    source = pydicom.dcmread(Path(pydicom.__file__).parent / "data" / "charset_files" / f"{name}.dcm")
    pixels = pydicom.dcmread(xray)
    ds = pixels.copy()
    for keyword in ("SpecificCharacterSet", "PatientName", "PatientID", "StudyDescription", "ReferringPhysicianName"):
        if keyword in source:
            ds[keyword] = source[keyword]
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.save_as(out, enforce_file_format=True)
    return out


def dciodvfy_errors(path: Path) -> list[str]:
    """The lines dicom3tools' ``dciodvfy`` reports as errors for the file (warnings are not errors)."""
    result = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (result.stdout + result.stderr).splitlines() if re.match(r"^Error", line)]
