"""What real modalities send, sent by a real client: dcmtk's ``storescu`` to ``ccad dicom listen``, the results
to a real PACS (Debian's Orthanc) and read back from it. Patient names in Russian, Japanese, Korean, Greek,
Arabic, Hebrew, German and French (pydicom's character-set files) come back with the same characters; a JPEG
lossless SV1 X-ray is negotiated and scored; a Secondary Capture of a photo is not scored; a pixel bomb is
refused; every SR and capture ccad writes passes dicom3tools' ``dciodvfy`` without an error."""

import subprocess

import numpy as np
import pydicom
import pytest
from helpers import make_xray_dicom
from orthanc import ORTHANC, Orthanc, free_port, wait_for
from real_dicom import CHARSET_FILES, DCIODVFY, DCMTK, STORESCU, charset_xray, dciodvfy_errors, encode, pydicom_file

from ccad.data.synthetic import render_patient
from ccad.deploy.pacs.listener import Destination, Listener, ListenerSettings
from ccad.deploy.pacs.results import Algorithm, banner_lines
from ccad.models.card import DEFAULT_BUNDLE
from ccad.screening.records import Prediction

pytestmark = [
    pytest.mark.skipif(ORTHANC is None, reason="Orthanc is not installed (apt-get install orthanc; .ci/run does)"),
    pytest.mark.skipif(
        None in (DCMTK, STORESCU, DCIODVFY),
        reason="dcmtk and dicom3tools are not installed (apt-get install dcmtk dicom3tools; .ci/run does)",
    ),
]


def storescu(path, port: int) -> subprocess.CompletedProcess:
    """dcmtk's storescu sends ``path`` to ccad (AE title CCAD) on 127.0.0.1:``port``, proposing the file's own
    transfer syntax (``-xs``: and no other, so a syntax ccad did not negotiate fails the send)."""
    syntax = str(pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)
    proposal = {"1.2.840.10008.1.2.4.70": ["-R", "-xs"], "1.2.840.10008.1.2.5": ["-R", "-xr"]}.get(syntax, [])
    return subprocess.run(
        [STORESCU, "-v", *proposal, "-aec", "CCAD", "127.0.0.1", str(port), str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture(scope="module")
def sent(tmp_path_factory):
    """Every file below sent with storescu to a listener whose results go to Orthanc; (sources, Orthanc's
    instances of their studies, storescu's answers, the listener's stats, the spool)."""
    root = tmp_path_factory.mktemp("real")
    gray = render_patient(np.random.default_rng(5), "covid", 320)
    xray = make_xray_dicom(root / "xray.dcm", gray)
    sources = {name: charset_xray(name, xray, root / f"{name}.dcm") for name in CHARSET_FILES}
    sources["sv1"] = encode(
        charset_xray("chrGerm", xray, root / "plain.dcm"), root / "sv1.dcm", "1.2.840.10008.1.2.4.70"
    )
    sources["photo-capture"] = pydicom_file("SC_rgb_rle.dcm")  # a Secondary Capture, Modality OT
    orthanc = Orthanc(root / "orthanc", None).start()
    port = free_port()
    settings = ListenerSettings(
        DEFAULT_BUNDLE,
        Destination("ORTHANC", "127.0.0.1", orthanc.dicom_port),
        root / "spool",
        port=port,
        retry_max_s=1,
        study_window_s=1.0,  # the default mode, a result per study (each file here is a study of its own)
    )
    listener = Listener(settings).start()
    try:
        answers = {name: storescu(path, port) for name, path in sources.items()}
        done = lambda: listener.stats.scored + listener.stats.not_scored + listener.stats.failed  # noqa: E731
        wait_for(lambda: done() >= listener.stats.received and listener.idle(), 180, "every result delivered")
        studies = {
            name: pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID for name, path in sources.items()
        }
        found = {name: orthanc.study_instances(study) for name, study in studies.items()}
    finally:
        listener.stop()
        orthanc.stop()
    return sources, found, answers, listener.stats


def _results(found, name):
    return [ds for ds in found[name] if ds.get("Manufacturer") == "ccad"]


def test_storescu_sends_every_file_and_each_gets_its_results(sent):
    sources, found, answers, stats = sent
    for name, answer in answers.items():
        assert answer.returncode == 0, (name, answer.stdout + answer.stderr)
    assert stats.received == len(sources) and stats.failed == 0
    for name in sources:
        modalities = sorted(ds.Modality for ds in _results(found, name))
        assert modalities == (["SR"] if name == "photo-capture" else ["OT", "SR"]), name


@pytest.mark.parametrize("name", CHARSET_FILES)
def test_a_patient_name_comes_back_from_the_pacs_with_its_own_characters(sent, name):
    sources, found, _, _ = sent
    source = pydicom.dcmread(sources[name], stop_before_pixels=True)
    for result in _results(found, name):
        assert str(result.PatientName) == str(source.PatientName), (name, result.Modality)
        assert str(result.PatientID) == str(source.PatientID)
        assert result.SpecificCharacterSet == "ISO_IR 192"


def test_jpeg_lossless_sv1_the_usual_syntax_of_cr_and_dx_is_negotiated_and_scored(sent):
    _, found, answers, _ = sent
    syntax = pydicom.dcmread(sent[0]["sv1"], stop_before_pixels=True).file_meta.TransferSyntaxUID
    assert syntax == "1.2.840.10008.1.2.4.70"  # storescu proposed this syntax alone (-R -xs)
    assert answers["sv1"].returncode == 0 and "Success" in answers["sv1"].stdout + answers["sv1"].stderr
    sr = next(ds for ds in _results(found, "sv1") if ds.Modality == "SR")
    assert "Probability of covid" in str(sr)  # scored, not "not readable"


def test_a_secondary_capture_of_a_photo_is_not_scored_and_not_called_a_chest_x_ray(sent):
    _, found, _, stats = sent
    (sr,) = _results(found, "photo-capture")
    text = str(sr)
    assert "Secondary Capture of modality OT" in text
    assert "Plain chest X-ray" not in text and "Imaging procedure" in text
    assert stats.not_scored == 1


def test_the_capture_references_its_x_ray_and_copies_its_laterality(sent):
    sources, found, _, _ = sent
    source = pydicom.dcmread(sources["chrRuss"], stop_before_pixels=True)
    capture = next(ds for ds in _results(found, "chrRuss") if ds.Modality == "OT")
    (reference,) = capture.SourceImageSequence
    assert reference.ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert reference.ReferencedSOPClassUID == source.SOPClassUID
    assert "Laterality" in capture


def test_every_result_passes_dciodvfy(sent, tmp_path):
    _, found, _, _ = sent
    checked = 0
    for name, instances in found.items():
        for i, ds in enumerate(_results({name: instances}, name)):
            path = tmp_path / f"{name}-{i}.dcm"
            ds.save_as(path)
            assert dciodvfy_errors(path) == [], (name, ds.Modality)
            checked += 1
    assert checked == 2 * (len(found) - 1) + 1


def test_a_pixel_bomb_sent_by_storescu_is_refused_and_nothing_is_kept(tmp_path):
    import struct

    gray = render_patient(np.random.default_rng(1), "covid", 256)
    ds = pydicom.dcmread(
        encode(make_xray_dicom(tmp_path / "x.dcm", gray), tmp_path / "jls.dcm", "1.2.840.10008.1.2.4.80")
    )
    data = bytearray(ds.PixelData)
    at = data.index(b"\xff\xf7")  # JPEG-LS SOF55: the codestream says 20000 x 20000
    struct.pack_into(">HH", data, at + 5, 20000, 20000)
    ds.PixelData = bytes(data)
    ds.save_as(tmp_path / "bomb.dcm")
    port = free_port()
    settings = ListenerSettings(
        DEFAULT_BUNDLE, Destination("NOBODY", "127.0.0.1", free_port()), tmp_path / "spool", port=port
    )
    listener = Listener(settings).start()
    try:
        answer = subprocess.run(
            [
                STORESCU,
                "-v",
                "-R",
                "--propose-jls-lossless",
                "-aec",
                "CCAD",
                "127.0.0.1",
                str(port),
                str(tmp_path / "bomb.dcm"),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        listener.stop()
    assert "Refused: OutOfResources" in answer.stdout + answer.stderr, answer.stdout + answer.stderr  # 0xA700
    assert listener.stats.refused_too_large == 1 and listener.stats.received == 0
    assert not list((tmp_path / "spool" / "inbox").glob("*.dcm"))


def test_the_capture_says_suspected_or_not_with_p_covid_and_the_threshold():
    algorithm = Algorithm("ccad", "0.1", "0" * 64, "float", "rule", "covid", 0.732)
    suspected = Prediction("x", "covid", {"covid": 0.861, "normal": 0.139}, True)
    assert banner_lines(suspected, algorithm)[1] == "ccad: COVID-19 suspected - p(COVID-19) = 0.86, threshold 0.73"
    not_suspected = Prediction("x", "normal", {"covid": 0.687, "normal": 0.313}, False)
    lines = banner_lines(not_suspected, algorithm)
    assert lines[1] == "ccad: COVID-19 not suspected - p(COVID-19) = 0.69, threshold 0.73"  # never "normal (0.31)"
    assert lines[2].startswith("NOT A FRONTAL CHEST X-RAY")
    argmax = Algorithm("ccad", "0.1", "0" * 64, "float", "rule", "covid", None)
    assert "the most likely class" in banner_lines(suspected, argmax)[1]
