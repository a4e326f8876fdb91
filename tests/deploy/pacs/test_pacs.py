"""ccad dicom listen against a real PACS (Debian's Orthanc, started on 127.0.0.1 with a temporary
configuration): images routed by Orthanc come back as an SR and a heatmap capture in the same study."""

import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pydicom
import pytest
from helpers import PATIENT, make_xray_dicom
from orthanc import ORTHANC, Orthanc, c_store, free_port, wait_for

from ccad.data.synthetic import render_patient
from ccad.deploy.pacs.listener import Destination, Listener, ListenerSettings, transfer_syntaxes
from ccad.deploy.pacs.results import SC_SERIES_NUMBER, not_scored_reason
from ccad.errors import ConfigError
from ccad.screening import Screener

needs_orthanc = pytest.mark.skipif(
    ORTHANC is None, reason="Orthanc is not installed (apt-get install orthanc; .ci/run installs it)"
)


def xray(tmp_path, name, seed=0, **fields) -> Path:
    gray = render_patient(np.random.default_rng(seed), "covid", 256)
    return make_xray_dicom(tmp_path / f"{name}.dcm", gray, **fields)


def start_listener(bundle, port, destination_port, spool, log_path, *extra) -> subprocess.Popen:
    log = open(log_path, "ab")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ccad",
            "dicom",
            "listen",
            "--model",
            str(bundle),
            "--port",
            str(port),
            "--send-to",
            f"ORTHANC@127.0.0.1:{destination_port}",
            "--spool",
            str(spool),
            "--retry-max-s",
            "1",
            "--per-image",
            *extra,
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    wait_for(lambda: _listening(port) or process.poll() is not None, 60, "the listener to start")
    assert process.poll() is None, Path(log_path).read_text()
    return process


def _listening(port) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def stop(process):
    process.terminate()
    process.wait(30)


def assert_no_patient_fields(log: str) -> None:
    for value in PATIENT.values():
        assert value not in log and value.split("^")[0] not in log


def report_items(sr) -> dict[str, object]:
    """{concept code: value} of an SR's content tree: numbers, codes and texts."""
    items = {}

    def value_of(code):
        return next((code.get(k) for k in ("CodeValue", "LongCodeValue", "URNCodeValue") if k in code), None)

    def walk(sequence):
        for item in sequence:
            code = value_of(item.ConceptNameCodeSequence[0]) if "ConceptNameCodeSequence" in item else None
            if item.ValueType == "NUM":
                items[code] = float(item.MeasuredValueSequence[0].NumericValue)
            elif item.ValueType == "CODE":
                concept = item.ConceptCodeSequence[0]
                items[code] = (value_of(concept), concept.CodeMeaning)
            elif item.ValueType == "TEXT":
                items.setdefault(code, []).append(item.TextValue)
            if "ContentSequence" in item:
                walk(item.ContentSequence)

    walk(sr.ContentSequence)
    return items


# -- which images are scored (no server needed) -----------------------------------------------------------


@pytest.mark.parametrize(
    "fields, reason",
    [
        ({}, None),
        ({"ViewPosition": "LL"}, "lateral"),
        ({"BodyPartExamined": "HAND"}, "not chest"),
        ({"Modality": "CT"}, "not a radiograph"),
        ({"PixelData": None}, "no pixel data"),
        ({"BodyPartExamined": None, "ViewPosition": None}, None),  # not stated: scored
    ],
)
def test_only_frontal_chest_radiographs_are_scored(tmp_path, fields, reason):
    ds = pydicom.dcmread(xray(tmp_path, "x", **fields))
    found = not_scored_reason(ds)
    assert (found is None) if reason is None else (reason in found)


def test_settings_and_transfer_syntaxes():
    assert Destination.parse("ORTHANC@127.0.0.1:4242") == Destination("ORTHANC", "127.0.0.1", 4242)
    for bad in ("ORTHANC:4242", "ORTHANC@host", "@h:1", "A" * 17 + "@h:1"):
        with pytest.raises(ConfigError, match="`send_to`"):
            Destination.parse(bad)
    syntaxes = transfer_syntaxes()
    assert "1.2.840.10008.1.2.1" in syntaxes and "1.2.840.10008.1.2" in syntaxes and "1.2.840.10008.1.2.5" in syntaxes


# -- the listener on its own: bad input, a full queue ---------------------------------------------------------


class GatedScreener:
    """The bundle's real screener, held at a gate before scoring (to fill the queue deterministically)."""

    def __init__(self, screener):
        self._screener, self.gate, self.waiting = screener, threading.Event(), threading.Event()

    def __getattr__(self, name):
        return getattr(self._screener, name)

    def score(self, *args, **kwargs):
        self.waiting.set()
        self.gate.wait(60)
        return self._screener.score(*args, **kwargs)


def test_bad_input_a_full_queue_and_an_aborted_association_never_stop_the_listener(bundle, tmp_path, caplog):
    from pynetdicom import AE

    caplog.set_level("INFO", logger="ccad.dicom")
    predictor = GatedScreener(Screener.load(bundle))
    port = free_port()
    settings = ListenerSettings(
        bundle,
        Destination("NOBODY", "127.0.0.1", free_port()),
        tmp_path / "spool",
        port=port,
        queue_size=1,
        retry_max_s=0.5,
        per_image=True,
    )
    listener = Listener(settings, predictor).start()
    try:
        # truncated in the middle of an element, before its series UID: refused, never acknowledged
        good = xray(tmp_path, "good")
        data = good.read_bytes()
        truncated = tmp_path / "truncated.dcm"
        truncated.write_bytes(data[:600])
        assert c_store(truncated, port, "CCAD", chunked=True) in (0xA900, 0xC210)
        # an association aborted by the sender
        ae = AE(ae_title="TESTSCU")
        ae.add_requested_context("1.2.840.10008.5.1.4.1.1.1.1")
        assoc = ae.associate("127.0.0.1", port, ae_title="CCAD")
        assert assoc.is_established
        assoc.abort()
        # an unsupported transfer syntax is not negotiated
        ae = AE(ae_title="TESTSCU")
        ae.add_requested_context("1.2.840.10008.5.1.4.1.1.1.1", "1.2.840.10008.1.2.4.100")  # MPEG2
        assoc = ae.associate("127.0.0.1", port, ae_title="CCAD")
        assert not assoc.is_established or not assoc.accepted_contexts
        if assoc.is_established:
            assoc.release()
        predictor.gate.clear()
        wait_for(lambda: listener.queue.qsize() == 0, 30, "the truncated file to be handled")
        # a full queue: one image held by the worker, one waiting, the third answered "out of resources"
        predictor.waiting.clear()
        assert c_store(xray(tmp_path, "a", seed=1), port, "CCAD") == 0x0000
        wait_for(predictor.waiting.is_set, 30, "the worker to take the first image")
        assert c_store(xray(tmp_path, "b", seed=2), port, "CCAD") == 0x0000
        assert c_store(xray(tmp_path, "c", seed=3), port, "CCAD") == 0xA700
        predictor.gate.set()
        wait_for(lambda: listener.queue.qsize() == 0, 30, "the queue to drain")
        # 16-bit MONOCHROME1 is scored like any other
        mono1 = xray(tmp_path, "mono1", seed=4, photometric="MONOCHROME1")
        assert c_store(mono1, port, "CCAD") == 0x0000
        wait_for(lambda: listener.stats.scored >= 3, 60, "three images to be scored")
        assert listener.stats.refused_busy == 1
        # nothing delivered (the destination is down): every result waits in the outbox
        wait_for(lambda: len(list((tmp_path / "spool" / "outbox").glob("*.dcm"))) >= 6, 30, "results in the outbox")
        assert listener.stats.send_failures >= 1
    finally:
        predictor.gate.set()
        listener.stop()
    assert "scored" in caplog.text and "not delivered" in caplog.text
    assert_no_patient_fields(caplog.text)


# -- end to end with Orthanc -----------------------------------------------------------------------------------


@needs_orthanc
def test_an_xray_sent_to_orthanc_comes_back_with_its_report_and_heatmap(bundle, tmp_path):
    listener_port = free_port()
    orthanc = Orthanc(tmp_path / "orthanc", listener_port).start()
    log_path = tmp_path / "listener.log"
    listener = start_listener(bundle, listener_port, orthanc.dicom_port, tmp_path / "spool", log_path)
    try:
        study = pydicom.uid.generate_uid()
        frontal = xray(tmp_path, "frontal", study_uid=study)
        lateral = xray(tmp_path, "lateral", seed=5, study_uid=study, ViewPosition="LL")
        hand = xray(tmp_path, "hand", seed=6, study_uid=study, BodyPartExamined="HAND")
        for path in (frontal, lateral, hand):
            assert c_store(path, orthanc.dicom_port, "ORTHANC") == 0x0000

        def results():
            found = [ds for ds in orthanc.study_instances(study) if ds.Modality in ("SR", "OT")]
            return found if len(found) == 4 else None  # 3 reports + 1 capture

        found = wait_for(results, 120, "the reports and the capture in Orthanc")
    finally:
        stop(listener)
        orthanc.stop()
    source = pydicom.dcmread(frontal)
    reports = {
        ds.CurrentRequestedProcedureEvidenceSequence[0]
        .ReferencedSeriesSequence[0]
        .ReferencedSOPSequence[0]
        .ReferencedSOPInstanceUID: ds
        for ds in found
        if ds.Modality == "SR"
    }
    captures = [ds for ds in found if ds.Modality == "OT"]
    assert len(reports) == 3 and len(captures) == 1
    _check_report_and_capture(bundle, frontal, source, reports[source.SOPInstanceUID], captures[0], study)
    # the images not scored say why
    lateral_items = report_items(reports[pydicom.dcmread(lateral).SOPInstanceUID])
    assert "lateral" in lateral_items["not-scored"][1]
    assert "not chest" in report_items(reports[pydicom.dcmread(hand).SOPInstanceUID])["not-scored"][1]
    logged = log_path.read_text()
    assert "scored" in logged and "not scored" in logged
    assert_no_patient_fields(logged)


def _check_report_and_capture(bundle, frontal, source, report, capture, study) -> None:
    """The SR says what ``ccad predict`` says of the X-ray, and with the capture joins its patient and study."""
    screener = Screener.load(bundle)
    expected = list(screener.screen([frontal]))[0]
    items = report_items(report)
    for name, probability in expected.probabilities.items():
        assert items[f"p-{name}"] == pytest.approx(probability, abs=1e-5)
    assert items["screening-result"][0] == f"class-{expected.predicted_class}"
    assert items["out-of-distribution"][0] == ("373067005" if expected.in_distribution else "373066001")
    assert items["intended-use"][0] == "not-for-diagnosis"
    # the rule the class came from, as a number a reader can check the probability against
    assert items["decision-threshold"] == pytest.approx(screener.decision.threshold, abs=1e-9)
    # the same patient and study, a new series each, the algorithm identified
    for ds in (report, capture):
        assert (ds.PatientID, str(ds.PatientName), ds.StudyInstanceUID) == (
            PATIENT["PatientID"],
            PATIENT["PatientName"],
            study,
        )
        assert ds.SeriesInstanceUID != source.SeriesInstanceUID
    assert report.SeriesInstanceUID != capture.SeriesInstanceUID and capture.SeriesNumber == SC_SERIES_NUMBER
    assert "ccad" in items["111001"] and any("model sha256" in t for t in items["111002"])
    assert capture.BurnedInAnnotation == "YES" and "NOT FOR DIAGNOSIS" in capture.ImageComments
    assert capture.pixel_array.ndim == 3 and capture.pixel_array.shape[2] == 3


@needs_orthanc
def test_results_wait_while_the_pacs_is_down_and_arrive_once_after_it_is_up(bundle, tmp_path):
    listener_port = free_port()
    orthanc = Orthanc(tmp_path / "orthanc", listener_port)  # not started: the destination is down
    spool = tmp_path / "spool"
    listener = start_listener(bundle, listener_port, orthanc.dicom_port, spool, tmp_path / "listener.log")
    study = pydicom.uid.generate_uid()
    try:
        for i in range(2):
            assert c_store(xray(tmp_path, f"x{i}", seed=i, study_uid=study), listener_port, "CCAD") == 0x0000
        # an image is done when it has left the inbox; its results reach the outbox just before (a crash
        # between the two re-scores it into the same result files), so wait for both, not for one of them
        wait_for(
            lambda: len(list((spool / "outbox").glob("*.dcm"))) == 4 and not list((spool / "inbox").glob("*.dcm")),
            120,
            "4 results waiting and the inbox empty",
        )
        stop(listener)  # the listener restarts while results wait
        listener = start_listener(bundle, listener_port, orthanc.dicom_port, spool, tmp_path / "listener.log")
        orthanc.start()
        wait_for(lambda: not list((spool / "outbox").glob("*.dcm")), 120, "the outbox to empty")
        found = orthanc.study_instances(study)
    finally:
        stop(listener)
        orthanc.stop()
    assert sorted(ds.Modality for ds in found) == ["OT", "OT", "SR", "SR"]  # none lost, none duplicated
    assert len({ds.SOPInstanceUID for ds in found}) == 4


def test_the_spool_lists_only_finished_files(tmp_path):
    from ccad.deploy.pacs.spool import Spool

    spool = Spool(tmp_path / "spool").create()
    done = spool.receive("abc", b"x" * 10)
    (spool.inbox / ".abc.1234.tmp.dcm").write_bytes(b"half")  # an atomic write in progress
    assert spool.pending_inbox() == [done]
    assert oct((tmp_path / "spool").stat().st_mode)[-3:] == "700" and oct(done.stat().st_mode)[-3:] == "600"


def test_a_file_removed_while_the_spool_is_listed_is_left_out_not_an_error(tmp_path, monkeypatch):
    from ccad.deploy.pacs.spool import Spool

    spool = Spool(tmp_path / "spool").create()
    kept, sent = spool.receive("a", b"x"), spool.receive("b", b"y")
    real_stat = Path.stat

    def stat(path, *args, **kwargs):  # another sender thread delivered (and removed) "b" after the glob
        if path == sent:
            raise FileNotFoundError(path)
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(Path, "stat", stat)
    assert spool.pending_inbox() == [kept]


def test_each_result_takes_one_lane_and_an_images_objects_take_the_same_one():
    from ccad.deploy.pacs.listener import Lane

    lanes = [Lane(i, 3) for i in range(3)]
    keys = [f"{i:016x}" for i in range(0, 300, 7)]
    for key in keys:
        owners = {lane.index for lane in lanes for part in (0, 1) if lane.owns(Path(f"{key}-{part}.dcm"))}
        assert len(owners) == 1, key  # the SR and the capture: one lane, so they arrive in order
    assert {lane.index for lane in lanes for key in keys if lane.owns(Path(f"{key}-0.dcm"))} == {0, 1, 2}
    assert [lane.owns(Path("abc.json")) for lane in lanes] == [True, False, False]  # FHIR reports: lane 0


def test_result_sockets_send_at_once():
    from types import SimpleNamespace

    from ccad.deploy.pacs.scp import no_delay

    with socket.socket() as sock:
        no_delay(SimpleNamespace(assoc=SimpleNamespace(dul=SimpleNamespace(socket=SimpleNamespace(socket=sock)))))
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1


def test_results_are_still_made_when_the_result_process_dies(bundle, tmp_path):
    import os
    import signal

    settings = ListenerSettings(
        bundle, Destination("NOBODY", "127.0.0.1", free_port()), tmp_path / "spool", per_image=True
    )
    listener = Listener(settings).start(scp=False)
    try:
        (pid,) = listener.worker.builder._processes  # the one result process
        assert listener.take("first", xray(tmp_path, "first").read_bytes()) is not None
        wait_for(lambda: listener.stats.scored == 1, 60, "the first image")
        os.kill(pid, signal.SIGKILL)
        assert listener.take("second", xray(tmp_path, "second", seed=1).read_bytes()) is not None
        wait_for(lambda: listener.stats.scored + listener.stats.failed == 2, 60, "the second image")
    finally:
        listener.stop()
    assert listener.stats.scored == 2 and listener.stats.failed == 0
    outbox = sorted(p.name for p in (tmp_path / "spool" / "outbox").glob("*.dcm"))
    assert outbox == ["first-0.dcm", "first-1.dcm", "second-0.dcm", "second-1.dcm"]  # the SR and the capture


# -- what modalities really send: minimal, odd, incomplete ----------------------------------------------------

#: A marker in every text attribute of the odd data sets: it must never reach the listener's log.
MARKER = "ZQXMARK"
#: Type 2 attributes a minimal CR leaves out (PS3.3 Patient, General Study, General Series, CR Image modules).
LEFT_OUT = dict(
    PatientBirthDate=None,
    PatientSex=None,
    AccessionNumber=None,
    StudyID=None,
    StudyDate=None,
    StudyTime=None,
    ReferringPhysicianName=None,
    Manufacturer=None,
    PatientOrientation=None,
    BodyPartExamined=None,
    ViewPosition=None,
    SeriesNumber=None,
    InstanceNumber=None,
    PresentationIntentType=None,
    ImageType=None,
)


def odd_datasets(tmp_path, study):
    """(name, path) of data sets as modalities send them: each must get exactly one report."""
    cr = "1.2.840.10008.5.1.4.1.1.1"
    marked = dict(
        PatientName=f"{MARKER}^Name\nccad.dicom INFO forged",
        PatientID=f"{MARKER}-ID",
        AccessionNumber=f"{MARKER}AC",
        StudyID=f"{MARKER}S",
        Manufacturer=f"{MARKER} Medical",
        StudyDescription=f"{MARKER} chest",
        ReferringPhysicianName=f"{MARKER}^Dr",
    )
    return [
        ("minimal CR", xray(tmp_path, "minimal", seed=11, study_uid=study, sop_class=cr, **LEFT_OUT)),
        ("minimal DX", xray(tmp_path, "minimal-dx", seed=12, study_uid=study, **LEFT_OUT)),
        (
            "values their VR does not allow",
            xray(
                tmp_path,
                "invalid",
                seed=13,
                study_uid=study,
                PatientBirthDate=f"{MARKER}DOB",
                PatientSex=f"{MARKER}SEX",
                StudyDate="20261399",
                StudyTime="99",
                **{k: v for k, v in marked.items() if k != "PatientName"},
            ),
        ),
        (
            "one-word name, newline in a name",
            xray(
                tmp_path,
                "smith",
                seed=14,
                study_uid=study,
                PatientName=MARKER,
                **{k: v for k, v in marked.items() if k != "PatientName"},
            ),
        ),
        ("a forged log line in the name", xray(tmp_path, "forged", seed=15, study_uid=study, **marked)),
    ]


def test_a_data_set_without_a_series_uid_is_refused_not_acknowledged(bundle, tmp_path):
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
    try:
        assert c_store(xray(tmp_path, "no-series", SeriesInstanceUID=None), port, "CCAD") == 0xA900
        assert c_store(xray(tmp_path, "bad-uid", StudyInstanceUID="1.2.abc"), port, "CCAD") == 0xA900
    finally:
        listener.stop()
    assert listener.stats.received == 0 and listener.stats.refused_incomplete == 2
    assert not list((tmp_path / "spool" / "inbox").glob("*.dcm"))


def test_result_uids_are_derived_so_a_resend_is_the_same_object(bundle, tmp_path):
    from ccad.deploy.pacs.results import Algorithm, structured_report

    path = xray(tmp_path, "x")
    ds = pydicom.dcmread(path)
    prediction = list(Screener.load(bundle).screen([path], with_heatmaps=True))[0]
    algorithm = Algorithm("ccad", "0", "ab" * 32, "float", "rule")
    first, again = structured_report(ds, algorithm, prediction), structured_report(ds, algorithm, prediction)
    assert (first.SOPInstanceUID, first.SeriesInstanceUID) == (again.SOPInstanceUID, again.SeriesInstanceUID)
    assert first.SOPInstanceUID.startswith("2.25.") and len(first.SOPInstanceUID) <= 64
    other = structured_report(ds, Algorithm("ccad", "0", "cd" * 32, "float", "rule"), prediction)
    assert other.SOPInstanceUID != first.SOPInstanceUID  # another model: another object


@needs_orthanc
def test_every_acknowledged_image_ends_as_exactly_one_result_and_no_value_reaches_the_log(bundle, tmp_path):
    listener_port = free_port()
    orthanc = Orthanc(tmp_path / "orthanc", listener_port).start()
    log_path = tmp_path / "listener.log"
    spool = tmp_path / "spool"
    listener = start_listener(bundle, listener_port, orthanc.dicom_port, spool, log_path)
    study = pydicom.uid.generate_uid()
    sent = odd_datasets(tmp_path, study)
    try:
        for name, path in sent:
            assert c_store(path, listener_port, "CCAD") == 0x0000, name

        def reports():
            found = [ds for ds in orthanc.study_instances(study) if ds.Modality == "SR"]
            return found if len(found) >= len(sent) else None

        wait_for(reports, 120, "a report for every image")
        # a modality that sends again, and a listener restarted in between: still one result each
        stop(listener)
        listener = start_listener(bundle, listener_port, orthanc.dicom_port, spool, log_path)
        for name, path in sent[:2]:
            assert c_store(path, listener_port, "CCAD") == 0x0000, name
        wait_for(
            lambda: not list((spool / "outbox").glob("*.dcm")) and not list((spool / "inbox").glob("*.dcm")),
            120,
            "the spool to empty",
        )
        found = orthanc.study_instances(study)
    finally:
        stop(listener)
        orthanc.stop()
    results = [ds for ds in found if ds.Modality in ("SR", "OT")]
    referenced = [
        ds.CurrentRequestedProcedureEvidenceSequence[0]
        .ReferencedSeriesSequence[0]
        .ReferencedSOPSequence[0]
        .ReferencedSOPInstanceUID
        for ds in results
        if ds.Modality == "SR"
    ]
    assert sorted(referenced) == sorted(pydicom.dcmread(p).SOPInstanceUID for _, p in sent)  # one report each
    assert sum(ds.Modality == "OT" for ds in results) == len(sent)  # all scored: one capture each
    assert not list((spool / "failed").glob("*.dcm"))
    logged = log_path.read_text()
    assert MARKER not in logged and "forged" not in logged
    for _, path in sent:  # no identifier in clear either: images are named by a hash of their UID
        ds = pydicom.dcmread(path)
        assert ds.SOPInstanceUID not in logged and ds.SeriesInstanceUID not in logged
    assert study not in logged
    assert "scored" in logged


def _peak_mb(pid) -> float:
    line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def test_a_deflate_bomb_or_an_oversized_data_set_is_refused_without_the_memory(bundle, tmp_path):
    from helpers import make_dataset
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    # 600 MB of zero pixels deflate to ~0.6 MB; the header says 64 x 64: only the bounded inflater can tell
    bomb = make_dataset(
        tmp_path / "bomb.dcm",
        64,
        64,
        bytes(600 * 2**20),
        DeflatedExplicitVRLittleEndian,
        SOPClassUID="1.2.840.10008.5.1.4.1.1.1",
        StudyInstanceUID=pydicom.uid.generate_uid(),
        SeriesInstanceUID=pydicom.uid.generate_uid(),
        Modality="CR",
    )
    assert bomb.stat().st_size < 2 * 2**20
    big = xray(tmp_path, "big", seed=3)  # a 256 x 256 film is ~130 KB: over a 0.1 MB limit
    port = free_port()
    listener = start_listener(
        bundle, port, free_port(), tmp_path / "spool", tmp_path / "listener.log", "--max-dataset-mb", "1"
    )
    try:
        idle = _peak_mb(listener.pid)
        assert c_store(bomb, port, "CCAD", chunked=True) == 0xA700
        assert _peak_mb(listener.pid) - idle < 300  # the old listener inflated it all: +600 MB and more
        assert c_store(xray(tmp_path, "ok", seed=4), port, "CCAD") == 0x0000
    finally:
        stop(listener)
    settings = ListenerSettings(
        bundle,
        Destination("NOBODY", "127.0.0.1", free_port()),
        tmp_path / "spool2",
        port=free_port(),
        max_dataset_bytes=2**20,
        per_image=True,
    )
    listener = Listener(settings).start()
    try:
        listener.settings.max_dataset_bytes = 100_000  # below the 1 MB floor of the option, for a small file
        assert c_store(big, settings.port, "CCAD") == 0xA700
        assert listener.stats.refused_too_large == 1 and listener.stats.received == 0
    finally:
        listener.stop()
    logged = (tmp_path / "listener.log").read_text()
    assert "inflates past" in logged and "status 0xA700" in logged


def test_the_report_says_out_of_distribution_when_the_guard_says_so(bundle, tmp_path):
    from dataclasses import replace

    from ccad.deploy.pacs.results import Algorithm, structured_report

    path = xray(tmp_path, "x")
    ds = pydicom.dcmread(path)
    prediction = list(Screener.load(bundle).screen([path]))[0]
    algorithm = Algorithm("ccad", "0", "ab" * 32, "float", "rule")
    inside = report_items(structured_report(ds, algorithm, replace(prediction, in_distribution=True)))
    outside = report_items(structured_report(ds, algorithm, replace(prediction, in_distribution=False)))
    assert inside["out-of-distribution"][0] == "373067005"  # SNOMED "No"
    assert outside["out-of-distribution"][0] == "373066001"  # SNOMED "Yes"


def jpeg2000_xray(tmp_path, name, seed=0) -> Path:
    """A DX whose pixels are a lossless JPEG 2000 codestream (Pillow's OpenJPEG encoder), as many CR/DX
    modalities and archives store them."""
    import io

    from PIL import Image
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEG2000Lossless

    gray = render_patient(np.random.default_rng(seed), "covid", 256)
    buffer = io.BytesIO()
    Image.fromarray(np.round(gray * 4095).astype(np.uint16)).save(
        buffer, format="JPEG2000", no_jp2=True, irreversible=False
    )
    return make_xray_dicom(
        tmp_path / f"{name}.dcm", gray, syntax=JPEG2000Lossless, PixelData=encapsulate([buffer.getvalue()])
    )


def test_a_jpeg_2000_xray_is_accepted_and_scored_like_its_uncompressed_copy(bundle, tmp_path):

    compressed, plain = jpeg2000_xray(tmp_path, "j2k", seed=7), xray(tmp_path, "plain", seed=7)
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
    try:
        assert c_store(compressed, port, "CCAD") == 0x0000
        wait_for(lambda: listener.stats.scored == 1, 60, "the JPEG 2000 image to be scored")
    finally:
        listener.stop()
    a, b = list(Screener.load(bundle).screen([compressed, plain]))
    assert a.probabilities == pytest.approx(b.probabilities, abs=1e-6)  # lossless: the same pixels, the same score


def test_the_listener_serves_its_metrics_and_logs_pseudonyms_only(bundle, tmp_path):
    import json
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    from ccad.deploy.live_metrics import pseudonym

    port, metrics_port = free_port(), free_port()
    settings = ListenerSettings(
        bundle,
        Destination("NOBODY", "127.0.0.1", free_port()),
        tmp_path / "spool",
        port=port,
        retry_max_s=0.5,
        metrics_port=metrics_port,
        result_log=tmp_path / "results.jsonl",
        per_image=True,
    )
    listener = Listener(settings).start()
    try:
        sent = [xray(tmp_path, f"m{i}", seed=i) for i in range(2)]
        assert all(c_store(path, port, "CCAD") == 0x0000 for path in sent)
        wait_for(lambda: listener.stats.scored == 2, 60, "two images to be scored")
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as answer:
            text = answer.read().decode()
    finally:
        listener.stop()
    got = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert got[("ccad_images_scored_total", (("adapter", "dicom"),))] == 2
    assert got[("ccad_dicom_events_total", (("event", "received"),))] == 2
    records = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    uids = [str(pydicom.dcmread(path).SOPInstanceUID) for path in sent]
    assert sorted(r["image"] for r in records) == sorted(pseudonym(uid) for uid in uids)
    everything = text + (tmp_path / "results.jsonl").read_text()
    assert not any(uid in everything for uid in uids)
    assert_no_patient_fields(everything)
