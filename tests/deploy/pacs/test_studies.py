"""One result per study, against a real Orthanc and a real MLLP receiver: a study of three images (a PA, a
lateral, a repeat of the PA) gives one study-level SR that references all three, one HL7 message and one FHIR
report; sent again, nothing new; a late fourth image gives a new version that names its predecessor."""

import json
import time

import hl7
import numpy as np
import pydicom
import pytest
from helpers import PATIENT, make_xray_dicom
from mllp import MllpReceiver
from orthanc import ORTHANC, Orthanc, c_store, free_port, wait_for
from real_dicom import DCIODVFY, dciodvfy_errors

from ccad.data.synthetic import render_patient
from ccad.deploy.pacs.listener import Destination, Listener, ListenerSettings
from ccad.deploy.pacs.results import Algorithm
from ccad.deploy.pacs.studies import study_answer, study_report
from ccad.deploy.pacs.study_book import PUBLISHED, SOURCE, StudyBook
from ccad.models.card import DEFAULT_BUNDLE


def test_the_study_is_answered_by_its_highest_scored_image_and_not_by_one_not_scored():
    outcomes = [
        {"key": "a", "predicted_class": "normal", "probabilities": {"covid": 0.2, "normal": 0.8}},
        {"key": "b", "reason": "a lateral view"},
        {"key": "c", "predicted_class": "normal", "probabilities": {"covid": 0.4, "normal": 0.6}},
    ]
    assert study_answer(outcomes, "covid")["key"] == "c"
    assert study_answer([{"key": "b", "reason": "a lateral view"}], "covid") is None


def test_per_study_is_the_default_and_per_image_a_flag():
    settings = ListenerSettings(DEFAULT_BUNDLE, Destination("A", "127.0.0.1", 104))
    assert (settings.per_image, settings.study_window_s, settings.study_keep_days) == (False, 30.0, 7.0)
    from ccad.cli import build_parser

    args = build_parser().parse_args(["dicom", "listen", "--send-to", "A@127.0.0.1:104", "--per-image"])
    assert args.per_image is True and args.study_window_s == 30.0


def _publish(book, folder):
    """Answer the study in ``folder`` as the gatherer does: a snapshot, its SR, the record."""
    outcomes, newest = book.snapshot(folder)
    algorithm = Algorithm("ccad", "0", "ab" * 32, "float", "rule", "covid", 0.5)
    book.publish(folder, outcomes, newest, study_report(folder, book, algorithm, outcomes)[0])


def test_an_image_staged_while_its_study_is_answered_reopens_it(tmp_path):
    book, study = StudyBook(tmp_path / "studies"), pydicom.uid.generate_uid()
    folder = book.stage("a", pydicom.dcmread(_image(tmp_path, "a", study, 0)), None, "a lateral view")
    outcomes, newest = book.snapshot(folder)  # the gatherer starts answering...
    book.stage("b", pydicom.dcmread(_image(tmp_path, "b", study, 1)), None, "a lateral view")  # ...an image arrives
    algorithm = Algorithm("ccad", "0", "ab" * 32, "float", "rule", "covid", 0.5)
    book.publish(folder, outcomes, newest, study_report(folder, book, algorithm, outcomes)[0])
    assert book.due(0.0) == [folder]  # the second image is answered, in a new version
    _publish(book, folder)
    assert book.due(0.0) == [] and json.loads((folder / PUBLISHED).read_text())["keys"] == ["a", "b"]


def test_a_damaged_study_folder_is_passed_over_and_the_others_are_answered(tmp_path):
    book = StudyBook(tmp_path / "studies")
    damaged = book.stage("a", pydicom.dcmread(_image(tmp_path, "a", pydicom.uid.generate_uid(), 0)), None, "x")
    whole = book.stage("b", pydicom.dcmread(_image(tmp_path, "b", pydicom.uid.generate_uid(), 1)), None, "x")
    (damaged / PUBLISHED).write_text("")  # a record a power cut left empty
    assert book.due(0.0) == [whole] and book.prune(0.0) == 0


def test_an_image_called_positive_answers_the_study_whatever_the_rule():
    outcomes = [  # an argmax rule over three classes: b has the higher p(covid), a was called covid
        {"key": "a", "predicted_class": "covid", "probabilities": {"covid": 0.40, "normal": 0.30, "other": 0.30}},
        {"key": "b", "predicted_class": "other", "probabilities": {"covid": 0.45, "normal": 0.05, "other": 0.50}},
    ]
    assert study_answer(outcomes, "covid")["key"] == "a"


def test_a_study_answered_long_ago_forgets_its_patient_and_one_waiting_or_recent_does_not(tmp_path):

    book, study = StudyBook(tmp_path / "studies"), pydicom.uid.generate_uid()
    folder = book.stage("a", pydicom.dcmread(_image(tmp_path, "a", study, 0)), None, "a lateral view")
    later = time.time() + 8 * 86400
    assert book.prune(7 * 86400, now=later) == 0  # not answered yet: it waits for its answer
    _publish(book, folder)
    assert book.prune(7 * 86400) == 0 and (folder / SOURCE).exists()  # answered just now
    book.stage("b", pydicom.dcmread(_image(tmp_path, "b", study, 1)), None, "a lateral view")
    assert book.prune(7 * 86400, now=later) == 0  # a newer image waits for the study's new answer
    _publish(book, folder)
    assert book.prune(7 * 86400, now=later) == 1 and not (folder / SOURCE).exists()  # the patient's attributes
    assert PATIENT["PatientName"] not in " ".join(p.read_text() for p in folder.glob("*.json"))
    assert book.prune(7 * 86400, now=later) == 0
    late = book.stage("c", pydicom.dcmread(_image(tmp_path, "c", study, 2)), None, "a lateral view")
    assert late == folder and (folder / SOURCE).exists() and book.due(0.0) == [folder]  # all three answered
    assert [o["key"] for o in book.snapshot(folder)[0]] == ["a", "b", "c"]


def _image(tmp_path, name, study, seed, **fields):
    return make_xray_dicom(
        tmp_path / f"{name}.dcm",
        render_patient(np.random.default_rng(seed), "covid", 128),
        study_uid=study,
        AccessionNumber="ACC-42",
        **fields,
    )


@pytest.mark.skipif(ORTHANC is None, reason="Orthanc is not installed (apt-get install orthanc; .ci/run installs it)")
def test_a_study_of_three_gives_one_answer_a_resend_nothing_and_a_late_image_a_new_version(tmp_path):
    orthanc, receiver, port = Orthanc(tmp_path / "orthanc", None).start(), MllpReceiver("AA").start(), free_port()
    settings = _to_orthanc_and_ris(tmp_path, orthanc, receiver, port, study_window_s=1.0, result_process=False)
    study = pydicom.uid.generate_uid()
    images = [
        _image(tmp_path, "pa", study, 0),
        _image(tmp_path, "lateral", study, 1, ViewPosition="LL"),
        _image(tmp_path, "repeat", study, 2),
    ]
    listener = Listener(settings).start()

    def reports():
        return [ds for ds in orthanc.study_instances(study) if ds.Modality == "SR"]

    try:
        for path in images:
            assert c_store(path, port, "CCAD") == 0x0000
        (first,) = wait_for(lambda: reports() or None, 120, "the study's SR in Orthanc")
        wait_for(lambda: receiver.messages and listener.idle(), 60, "the HL7 message acknowledged")
        for path in images:  # the same study again
            assert c_store(path, port, "CCAD") == 0x0000
        wait_for(lambda: listener.idle() and listener.stats.received == 6, 60, "the resent images handled")
        wait_for(lambda: listener.studies.book.due(0.0) == [], 10, "the study settled")
        assert len(reports()) == 1 and len(receiver.messages) == 1 and listener.stats.studies_answered == 1
        assert c_store(_image(tmp_path, "late", study, 3), port, "CCAD") == 0x0000  # a late fourth image
        wait_for(lambda: len(reports()) == 2 or None, 120, "the study's second version")
        wait_for(lambda: len(receiver.messages) == 2 and listener.idle(), 60, "its HL7 message")
        (second,) = [ds for ds in reports() if ds.SOPInstanceUID != first.SOPInstanceUID]
        # each scored image's heatmap capture (not the lateral's), once however often the study was sent
        captures = [ds for ds in orthanc.study_instances(study) if ds.Modality == "OT"]
        assert len(captures) == 3 and {ds.SeriesNumber for ds in captures} == {9902}
    finally:
        listener.stop()
        receiver.stop()
        orthanc.stop()
    first_refs = _referenced(first)
    assert first_refs == {pydicom.dcmread(p).SOPInstanceUID for p in images}  # one SR, every image referenced
    assert _referenced(second) == first_refs | {pydicom.dcmread(tmp_path / "late.dcm").SOPInstanceUID}
    predecessor = second.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert predecessor.ReferencedSOPInstanceUID == first.SOPInstanceUID
    ids = [str(hl7.parse(m).segment("MSH")[10]) for m in receiver.messages]
    assert len(set(ids)) == 2  # a new version is a new message; a resend sent none
    priority = _one_report_and_task(tmp_path / "fhir", study)  # as the HL7 message's (made apart from it)
    assert {"stat": "S", "routine": "R"}[priority] == str(hl7.parse(receiver.messages[-1]).segment("OBR")[5])
    assert PATIENT["PatientID"] not in " ".join(receiver.messages)
    if DCIODVFY is not None:  # what ccad writes passes dicom3tools' validator
        second.save_as(tmp_path / "study-sr.dcm", enforce_file_format=True)
        assert dciodvfy_errors(tmp_path / "study-sr.dcm") == []


@pytest.mark.skipif(ORTHANC is None, reason="Orthanc is not installed (apt-get install orthanc; .ci/run installs it)")
def test_in_shadow_mode_a_study_reaches_neither_orthanc_nor_the_ris_nor_fhir(tmp_path):
    orthanc, receiver, port = Orthanc(tmp_path / "orthanc", None).start(), MllpReceiver("AA").start(), free_port()
    settings = _to_orthanc_and_ris(
        tmp_path, orthanc, receiver, port, study_window_s=0.0, result_log=tmp_path / "results.jsonl", shadow=True
    )
    study = pydicom.uid.generate_uid()
    listener = Listener(settings).start()
    try:
        for i, name in enumerate(("pa", "lateral", "repeat")):
            fields = {"ViewPosition": "LL"} if name == "lateral" else {}
            assert c_store(_image(tmp_path, name, study, i, **fields), port, "CCAD") == 0x0000
        wait_for(lambda: listener.stats.received == 3 and listener.idle(), 120, "the study scored")
        time.sleep(2.0)  # what would have been sent has had its chance: a sender looks once a second
        assert orthanc.study_instances(study) == [] and receiver.messages == []
    finally:
        listener.stop()
        receiver.stop()
        orthanc.stop()
    assert not (tmp_path / "fhir").exists() and (listener.stats.scored, listener.stats.not_scored) == (2, 1)
    assert len((tmp_path / "results.jsonl").read_text().splitlines()) == 2  # each scored image logged


def test_ccad_dicom_flush_answers_a_waiting_study_without_its_window(tmp_path, capsys):
    from ccad.cli import main

    settings = ListenerSettings(
        DEFAULT_BUNDLE,
        Destination("NOBODY", "127.0.0.1", free_port()),  # the SR waits in the outbox: this test is about when
        tmp_path / "spool",
        study_window_s=3600.0,
        result_process=False,
    )
    study, other = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    listener = Listener(settings).start(scp=False)
    try:
        for name, uid in (("a", study), ("b", study), ("c", other)):
            assert listener.take(name, _image(tmp_path, name, uid, 0).read_bytes())
        wait_for(lambda: listener.stats.received == 3 and listener.queue.unfinished_tasks == 0, 60, "images scored")
        time.sleep(1.0)
        assert listener.stats.studies_answered == 0  # an hour's window
        assert main(["dicom", "flush", "--spool", str(tmp_path / "spool"), "--study", study]) == 0
        assert "1 waiting study to be answered now" in capsys.readouterr().out
        wait_for(lambda: listener.stats.studies_answered == 1, 10, "the flushed study answered")
        time.sleep(1.0)
        assert listener.stats.studies_answered == 1  # the other study still waits for its window
        assert main(["dicom", "flush", "--spool", str(tmp_path / "spool"), "--study", study]) == 1  # answered
        assert main(["dicom", "flush", "--spool", str(tmp_path / "spool")]) == 0
        wait_for(lambda: listener.stats.studies_answered == 2, 10, "every waiting study answered")
    finally:
        listener.stop()
    assert main(["dicom", "flush", "--spool", str(tmp_path / "nowhere")]) == 2


def _to_orthanc_and_ris(tmp_path, orthanc, receiver, port: int, **settings) -> ListenerSettings:
    """A listener on ``port`` whose results go to ``orthanc``, its HL7 messages to ``receiver`` and its FHIR
    resources into ``tmp_path/fhir``."""
    return ListenerSettings(
        DEFAULT_BUNDLE,
        Destination("ORTHANC", "127.0.0.1", orthanc.dicom_port),
        tmp_path / "spool",
        port=port,
        hl7=f"127.0.0.1:{receiver.port}",
        fhir=str(tmp_path / "fhir"),
        retry_max_s=1.0,
        **settings,
    )


def _one_report_and_task(folder, study) -> str:
    """One FHIR report for the study and one worklist task, each replaced by the new version; the task's
    priority."""
    task_path, report_path = sorted(folder.glob("*.json"), key=lambda p: not p.name.endswith("task.json"))
    report, task = json.loads(report_path.read_text()), json.loads(task_path.read_text())
    assert report["identifier"][0]["value"] == f"urn:oid:{study}"
    assert task["focus"]["reference"] == f"DiagnosticReport/{report['id']}"
    assert report["basedOn"][0]["identifier"]["value"] == task["basedOn"][0]["identifier"]["value"] == "ACC-42"
    return task["priority"]


def _referenced(sr) -> set[str]:
    return {
        item.ReferencedSOPInstanceUID
        for series in sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
        for item in series.ReferencedSOPSequence
    }


def test_a_study_that_cannot_be_answered_keeps_its_reason_and_does_not_hold_the_listener_busy(tmp_path):
    import threading

    from ccad.deploy.pacs.listener import Stats
    from ccad.deploy.pacs.spool import Spool
    from ccad.deploy.pacs.studies import NOT_ANSWERED, StudyGatherer

    spool = Spool(tmp_path / "spool")
    spool.create()
    book = StudyBook(spool.root / "studies")
    settings = ListenerSettings(DEFAULT_BUNDLE, Destination("A", "127.0.0.1", 104), spool.root, study_window_s=0.0)
    algorithm = Algorithm("ccad", "0", "ab" * 32, "float", "rule", "covid", 0.5)
    gatherer = StudyGatherer(settings, spool, book, algorithm, Stats(), threading.Event(), lambda: None)
    ds = pydicom.dcmread(_image(tmp_path, "a", pydicom.uid.generate_uid(), 0))
    folder = book.stage("a", ds, None, "a lateral view")
    (folder / SOURCE).write_bytes(b"not DICOM")  # a disk that failed under the spool
    gatherer.flush()
    assert (folder / NOT_ANSWERED).read_text().startswith("could not be answered (")
    assert book.due(0.0) == [folder] and not gatherer.pending()  # waits, tried again, with its reason
    (folder / SOURCE).unlink()
    book.stage("a", ds, None, "a lateral view")
    assert gatherer.flush() == 1 and not (folder / NOT_ANSWERED).exists() and not book.due(0.0)
    assert [p.name for p in spool.outbox.iterdir()] == [f"{folder.name}-0.dcm"]  # its SR
