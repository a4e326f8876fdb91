"""The triage flag for the RIS: an HL7 v2.5.1 ORU^R01 read back with python-hl7, sent over MLLP to a real
receiver on 127.0.0.1 (acknowledging AA, AE, dropping the connection, never answering), retried from the spool
with the same control ID; and the silent go-live, which sends nothing at all."""

import json
from types import SimpleNamespace

import hl7
import numpy as np
import pytest
from helpers import PATIENT, free_port, make_xray_dicom
from mllp import MllpReceiver
from orthanc import wait_for

from ccad.deploy.pacs.listener import Destination, Listener, ListenerSettings
from ccad.deploy.pacs.oru import Hl7Destination, control_id, oru_message, send_oru
from ccad.deploy.pacs.results import Algorithm
from ccad.errors import ConfigError
from ccad.io.files import pseudonym
from ccad.models.card import DEFAULT_BUNDLE
from ccad.screening.records import Prediction

ALGORITHM = Algorithm("ccad", "0.1.0", "ab" * 32, "float", "covid if p_covid >= 0.732", "covid", 0.732)
SOURCE = SimpleNamespace(AccessionNumber="ACC|7^Ж", StudyInstanceUID="1.2.826.0.1.3680043.8.498.1")


def _obx(message) -> dict[str, tuple[str, str]]:
    """OBX code -> (value, abnormal flag), the value unescaped."""
    return {str(o[3][0][0]): (message.unescape(str(o[5])), str(o[8])) for o in message.segments("OBX")}


def test_a_suspected_result_is_a_stat_preliminary_oru_that_names_the_order_not_the_patient():
    covid = Prediction("k", "covid", {"covid": 0.91234, "normal": 0.08766}, in_distribution=False)
    message = hl7.parse(oru_message(SOURCE, ALGORITHM, covid, None, "key-1"))
    msh = message.segment("MSH")
    assert (str(msh[9]), str(msh[12]), str(msh[18])) == ("ORU^R01^ORU_R01", "2.5.1", "UNICODE UTF-8")
    assert str(msh[10]) == control_id("key-1", ALGORITHM) and len(str(msh[10])) <= 20
    assert [str(s[0]) for s in message] == ["MSH", "ORC", "OBR"] + ["OBX"] * 7  # no PID: no patient field
    obr = message.segment("OBR")
    assert message.unescape(str(obr[3])) == "ACC|7^Ж"  # the accession number keeps its exact characters
    assert (str(obr[5]), str(obr[25])) == ("S", "P")  # stat, preliminary
    obx = _obx(message)
    assert obx["RESULT"] == ("COVID-19 suspected", "A") and obx["PPOS"] == ("0.9123", "")
    assert obx["THRESHOLD"][0] == "0.7320" and obx["STUDYUID"][0] == SOURCE.StudyInstanceUID
    assert obx["OOD"] == ("flagged", "A") and "ab" * 32 in obx["MODEL"][0] and "not for diagnosis" in obx["NOTE"][0]
    assert PATIENT["PatientName"] not in str(message) and PATIENT["PatientID"] not in str(message)


def test_a_negative_is_routine_and_an_unscored_image_says_why():
    normal = Prediction("k", "normal", {"covid": 0.1, "normal": 0.9}, in_distribution=True)
    message = hl7.parse(oru_message(SOURCE, ALGORITHM, normal, None, "key-1"))
    assert str(message.segment("OBR")[5]) == "R" and _obx(message)["RESULT"][1] == "N" and "OOD" not in _obx(message)
    lateral = hl7.parse(oru_message(SOURCE, ALGORITHM, None, "a lateral view", "key-2"))
    assert _obx(lateral)["NOTSCORED"][0] == "not scored: a lateral view" and "RESULT" not in _obx(lateral)
    assert control_id("key-1", ALGORITHM) != control_id("key-2", ALGORITHM)  # one ID a result, stable on resend


@pytest.mark.parametrize(
    "mode, why",
    [("AA", None), ("AE", "acknowledged AE"), ("AR", "acknowledged AR"), ("drop", "the connection failed")],
)
def test_only_an_aa_naming_the_message_delivers_it(mode, why):
    receiver = MllpReceiver(mode).start()
    try:
        text = oru_message(SOURCE, ALGORITHM, None, "a CT", "key-3")
        answer = send_oru(Hl7Destination("127.0.0.1", receiver.port), text, timeout_s=10)
        assert answer == why or (why and answer.startswith(why))
        assert receiver.messages == [text]
    finally:
        receiver.stop()


def test_a_receiver_that_never_answers_or_is_not_there_is_a_reason_not_a_hang():
    receiver = MllpReceiver("silent").start()
    try:
        text = oru_message(SOURCE, ALGORITHM, None, "a CT", "key-4")
        assert (
            send_oru(Hl7Destination("127.0.0.1", receiver.port), text, timeout_s=1) == "no acknowledgement within 1 s"
        )
    finally:
        receiver.stop()
    assert send_oru(Hl7Destination("127.0.0.1", free_port()), text, timeout_s=5).startswith("the connection failed")
    with pytest.raises(ConfigError, match="HOST:PORT"):
        ListenerSettings(DEFAULT_BUNDLE, Destination("A", "127.0.0.1", 1), hl7="ris-without-port").check()


def _image(tmp_path, name: str) -> bytes:
    return make_xray_dicom(
        tmp_path / name, np.random.default_rng(0).random((64, 64)), AccessionNumber="ACC-9"
    ).read_bytes()


def test_the_listener_retries_an_unacknowledged_message_with_the_same_control_id(tmp_path):
    receiver = MllpReceiver("AE").start()
    settings = ListenerSettings(
        DEFAULT_BUNDLE,
        Destination("NOBODY", "127.0.0.1", free_port()),  # the DICOM results wait: this test is about HL7
        tmp_path / "spool",
        hl7=f"127.0.0.1:{receiver.port}",
        result_process=False,
        retry_max_s=1.0,
        per_image=True,
    )
    listener = Listener(settings).start(scp=False)
    try:
        assert listener.take("k1", _image(tmp_path, "a.dcm"))
        wait_for(lambda: len(receiver.messages) >= 2, 60, "the ORU sent and retried after AE")
        assert list((tmp_path / "spool" / "hl7").glob("*.hl7"))  # not acknowledged AA: still in the spool
        receiver.mode = "AA"
        wait_for(lambda: not list((tmp_path / "spool" / "hl7").glob("*.hl7")), 60, "the ORU acknowledged AA")
    finally:
        listener.stop()
        receiver.stop()
    ids = {str(hl7.parse(m)["MSH.F10"]) for m in receiver.messages}
    assert len(receiver.messages) >= 3 and len(ids) == 1  # every resend the same message
    assert hl7.parse(receiver.messages[-1]).unescape(str(hl7.parse(receiver.messages[-1]).segment("OBR")[3])) == "ACC-9"
    assert listener.stats.send_failures >= 2


def test_shadow_mode_scores_and_logs_and_sends_nothing(tmp_path):
    receiver = MllpReceiver("AA").start()
    settings = ListenerSettings(
        DEFAULT_BUNDLE,
        Destination("NOBODY", "127.0.0.1", free_port()),
        tmp_path / "spool",
        hl7=f"127.0.0.1:{receiver.port}",
        fhir=str(tmp_path / "fhir"),
        result_log=tmp_path / "results.jsonl",
        shadow=True,
        result_process=False,
    )
    listener = Listener(settings).start(scp=False)
    try:
        for name in ("a.dcm", "b.dcm"):
            assert listener.take(name, _image(tmp_path, name))
        wait_for(lambda: listener.stats.scored == 2 and listener.idle(), 60, "two images scored")
    finally:
        listener.stop()
        receiver.stop()
    spool = tmp_path / "spool"
    assert [p for folder in ("outbox", "hl7", "fhir") for p in (spool / folder).iterdir()] == []
    assert receiver.messages == [] and not (tmp_path / "fhir").exists()
    logged = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert len(logged) == 2 and PATIENT["PatientID"] not in json.dumps(logged)
    # what ccad validate --results joins the readers' findings on: pseudonyms, never the values
    assert {r["accession"] for r in logged} == {pseudonym("ACC-9")} and "ACC-9" not in json.dumps(logged)
