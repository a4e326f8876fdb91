"""One corpus of hostile and odd files, made here, through every way an image comes in: ``ccad predict``
(a row each, an error for the bad ones, no traceback), the web API (never a 5xx) and the DICOM listener
(a failure status, or success followed by exactly one result)."""

import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient
from helpers import GRADIENT, hidden_deflate_bomb, make_dataset, make_xray_dicom, png_bytes
from orthanc import c_store, free_port, wait_for
from pydicom.uid import DeflatedExplicitVRLittleEndian, RLELossless

from ccad.cli import main
from ccad.data.synthetic import render_patient
from ccad.deploy.pacs.listener import Destination, Listener, ListenerSettings
from ccad.deploy.web import ServeSettings, create_app


def corpus(folder):
    """{name: path}: what careless and hostile senders send."""
    folder.mkdir(parents=True, exist_ok=True)
    gray = render_patient(np.random.default_rng(3), "covid", 256)
    files = {
        "good.dcm": make_xray_dicom(folder / "good.dcm", gray),
        "minimal.dcm": make_xray_dicom(
            folder / "minimal.dcm",
            gray,
            PatientBirthDate=None,
            PatientSex=None,
            AccessionNumber=None,
            StudyID=None,
            StudyDate=None,
            Manufacturer=None,
        ),
        "no-series.dcm": make_xray_dicom(folder / "no-series.dcm", gray, SeriesInstanceUID=None),
        "no-pixels.dcm": make_xray_dicom(folder / "no-pixels.dcm", gray, PixelData=None),
        "rle-4-frames.dcm": _rle_four_frames(folder, gray),
    }
    return {**files, **_broken(folder, gray), **_pngs(folder)}


def _rle_four_frames(folder, gray):
    """An RLE Lossless data set of four frames (the first half dark, half bright; the others bright)."""
    from pydicom.encaps import encapsulate
    from pydicom.pixels.encoders import RLELosslessEncoder

    frames = [np.full((512, 512), v, np.uint16) for v in (100, 4000, 4000, 4000)]
    frames[0][:, 256:] = 3000
    encoded = [
        RLELosslessEncoder.encode(
            f,
            rows=512,
            columns=512,
            samples_per_pixel=1,
            bits_allocated=16,
            bits_stored=16,
            pixel_representation=0,
            photometric_interpretation="MONOCHROME2",
            number_of_frames=1,
        )
        for f in frames
    ]
    return make_xray_dicom(
        folder / "rle.dcm",
        gray,
        syntax=RLELossless,
        NumberOfFrames=4,
        Rows=512,
        Columns=512,
        BitsStored=16,
        HighBit=15,
        PixelData=encapsulate(encoded),
    )


def _broken(folder, gray):
    """A hidden deflate bomb, a deflate stream with garbage at its end, a data set cut in half."""
    bomb = folder / "hidden-bomb.dcm"
    bomb.write_bytes(hidden_deflate_bomb(folder, "no group length"))  # its SOP class is one a listener takes
    broken = bytearray(
        make_dataset(
            folder / "deflate.dcm", 64, 64, GRADIENT.astype(np.uint16).tobytes(), DeflatedExplicitVRLittleEndian
        ).read_bytes()
    )
    broken[-200:] = bytes(range(200))
    (folder / "bad-deflate.dcm").write_bytes(bytes(broken))
    truncated = make_xray_dicom(folder / "t.dcm", gray).read_bytes()
    (folder / "truncated.dcm").write_bytes(truncated[: len(truncated) // 2])
    return {
        "hidden-bomb.dcm": bomb,
        "bad-deflate.dcm": folder / "bad-deflate.dcm",
        "truncated.dcm": folder / "truncated.dcm",
    }


def _pngs(folder):
    files = {}
    for name, data in (
        ("empty.png", b""),
        ("text.png", b"just text, not an image\n"),
        ("truncated.png", png_bytes((200, 200))[:300]),
        ("good.png", png_bytes((200, 200))),
    ):
        (folder / name).write_bytes(data)
        files[name] = folder / name
    return files


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return corpus(tmp_path_factory.mktemp("corpus") / "in")


def test_predict_gives_every_file_a_row_and_no_traceback(bundle, files, tmp_path, capsys):
    import csv

    folder = next(iter(files.values())).parent
    assert main(["predict", "--model", str(bundle), str(folder), "--out", str(tmp_path / "p.csv")]) == 0
    rows = {r["file"].rsplit("/", 1)[-1]: r for r in csv.DictReader(open(tmp_path / "p.csv"))}
    assert {p.name for p in files.values()} <= set(rows)
    by_path = {p.name: rows[p.name] for p in files.values()}
    for good in ("good.dcm", "minimal.dcm", "rle.dcm", "good.png"):
        assert by_path[good]["predicted_class"] and not by_path[good]["error"], good
    for bad in ("empty.png", "text.png", "truncated.png", "no-pixels.dcm", "truncated.dcm", "bad-deflate.dcm"):
        assert by_path[bad]["error"] and "\n" not in by_path[bad]["error"], bad
    # a log handler an earlier in-process command left (``configure_logging``) follows stderr, so nothing
    # here prints "--- Logging error ---" and a traceback
    assert "Traceback" not in capsys.readouterr().err


def test_the_api_never_answers_5xx(bundle, files):
    with TestClient(create_app(ServeSettings(bundle))) as c:
        for name, path in files.items():
            kind = "application/dicom" if name.endswith(".dcm") else "image/png"
            r = c.post("/api/v1/predict", files=[("files", (name, path.read_bytes(), kind))])
            assert r.status_code < 500, (name, r.status_code, r.text)
            assert r.status_code in (200, 400, 413, 415, 422), name  # 422: a DICOM without pixels is not scored


def test_the_listener_refuses_or_answers_every_acknowledged_image(bundle, files, tmp_path):
    port = free_port()
    settings = ListenerSettings(
        bundle,
        Destination("NOBODY", "127.0.0.1", free_port()),
        tmp_path / "spool",
        port=port,
        retry_max_s=0.5,
        per_image=True,
    )
    listener = Listener(settings).start()
    statuses = {}
    try:
        for name, path in files.items():
            if name.endswith(".dcm"):
                statuses[name] = c_store(path, port, "CCAD", chunked=True)
        acknowledged = [n for n, s in statuses.items() if s == 0x0000]
        wait_for(
            lambda: listener.stats.scored + listener.stats.not_scored + listener.stats.failed >= len(acknowledged),
            120,
            "every acknowledged image to be handled",
        )
    finally:
        listener.stop()
    assert set(statuses.values()) <= {0x0000, 0xA700, 0xA900, 0xC210}, statuses
    assert statuses["good.dcm"] == statuses["minimal.dcm"] == statuses["rle-4-frames.dcm"] == 0x0000
    assert statuses["no-series.dcm"] == 0xA900
    reports = [pydicom.dcmread(p) for p in (tmp_path / "spool" / "outbox").glob("*.dcm")]
    referenced = [
        ds.CurrentRequestedProcedureEvidenceSequence[0]
        .ReferencedSeriesSequence[0]
        .ReferencedSOPSequence[0]
        .ReferencedSOPInstanceUID
        for ds in reports
        if ds.Modality == "SR"
    ]
    sent = {pydicom.dcmread(files[n], force=True, stop_before_pixels=True).SOPInstanceUID for n in acknowledged}
    assert sorted(referenced) == sorted(sent)  # one report for each image answered success, no more
    assert not list((tmp_path / "spool" / "failed").glob("*.dcm"))
