"""Helpers the tests share (tests/ is on the path: ``from helpers import make_dicom``). The DICOM X-ray maker
and the free-port finder live in ``support/``, which the benchmarks share too; they are re-exported here."""

import json
import urllib.request

import numpy as np
from dicom_files import PATIENT, make_xray_dicom  # noqa: E402,F401  (re-exported)
from net import free_port  # noqa: E402,F401  (re-exported)
from prometheus_client.parser import text_string_to_metric_families
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
    """A 16-bit MONOCHROME2 DICOM of ``rows x cols`` in its header with whatever ``pixels`` and transfer syntax
    (a Secondary Capture of Modality DX, which ccad scores, unless ``fields`` say otherwise)."""
    fields = {"Modality": "DX", **fields}
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


def fake_screener(intake=None, fields=None, **card):
    """A :class:`ccad.screening.Screener` with no network: p(covid) is the input's mean (the other two
    classes share the rest 3:1; with two, the other has it), the feature map is (2, 2, 3) with a hot
    top-left corner in channel 1, and ``prepare`` gives an 8 x 8 image of the gray image's mean
    (``fields``: the lung fields it carries). ``card`` overrides the model card's fields (``decision``,
    ...). The predictor records each batch's size."""
    from ccad.models.card import ModelCard
    from ccad.preprocessing.pipeline import Prepared
    from ccad.scoring.predictor import Predictor
    from ccad.screening import Intake, Screener

    class MeanPredictor(Predictor):
        batches: list

        def _network(self, batch):
            self.batches.append(len(batch))
            mean = batch.mean(axis=(1, 2, 3))
            fmap = np.zeros((len(batch), 2, 2, 3), np.float32)
            fmap[..., 0], fmap[:, 0, 0, 1], fmap[..., 2] = mean[:, None, None], 1.0, (1 - mean)[:, None, None]
            rest = [1 - mean] if len(self.classes) == 2 else [0.75 * (1 - mean), 0.25 * (1 - mean)]
            return np.stack([mean, *rest], axis=1), fmap

    values = dict(
        classes=["covid", "normal", "pneumonia"],
        positive_class="covid",
        input_size=8,
        preprocess="none",
        models={"float": "m"},
        decision={"positive_index": 0, "threshold": 0.5, "temperature": 1.0, "rule": "0.5", "fitted_on": "a test"},
    )
    predictor = MeanPredictor(ModelCard(**{**values, **card}))
    predictor.batches = []
    s = Screener(predictor, intake or Intake())
    s.prepare = lambda gray: Prepared(np.full((8, 8), float(gray.mean()), np.float32), gray, (0, 8, 0, 8), fields)
    return s


def mean_png(value: int, side: int = 16) -> bytes:
    """A PNG whose mean is ``value`` (not blank: a blank image is refused as not an X-ray)."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    ramp = value + np.tile(np.array([-1, 1] * (side // 2)), (side, 1))
    Image.fromarray(ramp.astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def site_manifest(site, folder, normals: int | None = None, bad: dict[str, bytes] | None = None):
    """``folder/manifest.csv`` over a synthetic site's covid images, its first ``normals`` normal images (all
    when None) and ``bad`` files (name: bytes, written into ``folder``, labelled normal), in that order."""
    rows = [line.split(",") for line in (site / "manifest.csv").read_text().splitlines()[1:]]
    covid = [r for r in rows if r[1] == "covid"]
    normal = [r for r in rows if r[1] == "normal"][:normals]
    folder.mkdir()
    lines = ["path,label,group"] + [f"{site / r[0]},{r[1]},{r[2].strip()}" for r in covid + normal]
    for name, data in (bad or {}).items():
        (folder / name).write_bytes(data)
        lines.append(f"{folder / name},normal,{name}")
    (folder / "manifest.csv").write_text("\n".join(lines) + "\n")
    return folder / "manifest.csv"


def samples(text: str) -> dict[tuple, float]:
    """{(sample name, sorted labels): value} of a Prometheus text page."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def get_json(url: str, headers=None) -> dict:
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=10) as answer:
        return json.loads(answer.read())


#: The patient a reader's report names in its PID segment, which ccad never reads.
REPORT_PATIENT = "Иванова^Мария"
#: SNOMED CT codes a reader's report may carry in OBX: COVID-19, and "Negative".
COVID_19, NEGATIVE = "840539006", "260385009"


def readers_oru(control: str, accession: str, finding: str, status: str = "F") -> str:
    """A radiologist's report as a RIS sends it (HL7 v2 ORU^R01, segments ended by ``\\r``): the patient in PID,
    the accession number in OBR-18 and OBR-3, the result status in OBR-25, the finding coded in OBX."""
    obr = ["OBR", "1", "", accession, "CXR^Chest X-ray", *[""] * 13, accession, *[""] * 6, status]
    segments = [
        f"MSH|^~\\&|RIS|H|CCAD|H|20261207120000||ORU^R01^ORU_R01|{control}|P|2.5.1",
        f"PID|1||P-77||{REPORT_PATIENT}",
        "|".join(obr),
        f"OBX|1|CWE|59776-5^Findings^LN||{finding}^finding^SCT||||||{status}",
    ]
    return "\r".join(segments) + "\r"


def result_record(positive: bool, score: float, **fields) -> dict:
    """One line of a result log (``ccad.deploy.live_metrics.ResultLog``) of a scored image, no patient field;
    ``fields`` set or add others (``time``, ``image``, ``study``, ``accession``...)."""
    return {
        "time": "2026-12-01T10:00:00+00:00",
        "adapter": "dicom",
        "image": "0" * 16,
        "decision": "covid" if positive else "normal",
        "positive": positive,
        "score": score,
        "in_distribution": True,
        "ood_distance": 1.0,
        "lung_qc": [],
        "drift": "ok",
        **fields,
    }
