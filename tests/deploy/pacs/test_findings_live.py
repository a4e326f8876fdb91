"""The readers' findings, live (dicom listen --findings-port): the RIS sends the radiologists' final reports as
HL7 ORU^R01 over MLLP (python-hl7's client, as ccad's own ORU sender); each study's finding joined with the answer
ccad gave it; /metrics (a real HTTP scrape) has the live lower bounds of the hand count."""

import json
import logging
import socket
import urllib.request

import numpy as np
from helpers import COVID_19, NEGATIVE, REPORT_PATIENT, make_xray_dicom, readers_oru
from orthanc import free_port, wait_for

from ccad.data.synthetic import render_patient
from ccad.deploy.pacs.listener import Destination, Listener, ListenerSettings
from ccad.deploy.pacs.oru import Hl7Destination, send_oru
from ccad.evaluation.metrics import live_bounds, outcome_of
from ccad.io.files import pseudonym
from ccad.models.card import DEFAULT_BUNDLE


def _metric(text: str, name: str, measure: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + "{") and f'measure="{measure}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return None


def test_the_readers_final_reports_give_the_live_measures_of_the_hand_count(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    metrics_port = free_port()
    settings = ListenerSettings(
        DEFAULT_BUNDLE,
        Destination("NOBODY", "127.0.0.1", free_port()),
        tmp_path / "spool",
        host="127.0.0.1",
        findings_port=0,
        metrics_port=metrics_port,
        result_log=tmp_path / "results.jsonl",
        validated_sensitivity=0.9,
        shadow=True,
    )
    listener = Listener(settings).start(scp=False)
    try:
        for i, accession in enumerate(("A1", "A2")):
            gray = render_patient(np.random.default_rng(i), "covid", 128)
            data = make_xray_dicom(tmp_path / f"{i}.dcm", gray, AccessionNumber=accession).read_bytes()
            assert listener.take(f"k{i}", data)
        wait_for(lambda: listener.stats.scored == 2 and listener.idle(), 60, "both studies scored")
        logged = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
        called = {a: next(r["positive"] for r in logged if r["accession"] == pseudonym(a)) for a in ("A1", "A2")}
        ris = Hl7Destination("127.0.0.1", listener.findings.port)
        code = {True: COVID_19, False: NEGATIVE}
        assert send_oru(ris, readers_oru("M1", "A1", code[called["A1"]])) is None  # the reader agrees: acknowledged AA
        assert send_oru(ris, readers_oru("M2", "A2", code[not called["A2"]])) is None  # the reader disagrees
        assert send_oru(ris, readers_oru("M3", "A1", code[True], status="P")) is None  # preliminary: not counted
        assert send_oru(ris, readers_oru("M4", "A9", code[True])) is None  # a study ccad never saw
        with socket.create_connection(("127.0.0.1", listener.findings.port), timeout=10) as peer:
            peer.sendall(b"\x0bnot an HL7 message\x1c\r")
            assert b"MSA|AR|" in peer.recv(4096)
        stats = listener.stats
        assert (stats.findings_joined, stats.findings_unmatched, stats.findings_left_out) == (2, 1, 1)
        assert stats.findings_refused == 1
        hand = dict.fromkeys(("true_positive", "false_negative", "true_negative", "false_positive"), 0)
        hand[outcome_of(called["A1"], called["A1"])] += 1
        hand[outcome_of(called["A2"], not called["A2"])] += 1
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as answer:
            metrics = answer.read().decode()
        for measure, share in live_bounds(hand).items():
            assert _metric(metrics, "ccad_live_lower95", measure) == share["ci95"][0]
        assert _metric(metrics, "ccad_validated", "sensitivity") == 0.9
        # the reader corrects A2's report: it now agrees, and replaces the earlier outcome
        assert send_oru(ris, readers_oru("M5", "A2", code[called["A2"]], status="C")) is None
        hand[outcome_of(called["A2"], not called["A2"])] -= 1
        hand[outcome_of(called["A2"], called["A2"])] += 1
        assert listener.monitor._outcomes == hand
    finally:
        listener.stop()
    assert REPORT_PATIENT not in caplog.text and "P-77" not in caplog.text


def test_a_findings_port_in_use_is_refused_at_start(tmp_path):
    import pytest

    from ccad.errors import ConfigError

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        settings = ListenerSettings(
            DEFAULT_BUNDLE, Destination("A", "127.0.0.1", 104), tmp_path / "s", host="127.0.0.1",
            findings_port=taken.getsockname()[1],
        )  # fmt: skip
        with pytest.raises((OSError, ConfigError)):
            Listener(settings).start(scp=False)
    with pytest.raises(ConfigError):
        ListenerSettings(DEFAULT_BUNDLE, Destination("A", "127.0.0.1", 104), validated_sensitivity=1.5).check()


def test_a_message_over_the_limit_ends_its_connection_and_the_next_peer_is_served(tmp_path):
    from ccad.deploy.pacs.readers import MAX_REPORT_BYTES

    settings = ListenerSettings(
        DEFAULT_BUNDLE, Destination("A", "127.0.0.1", 104), tmp_path / "s", host="127.0.0.1", findings_port=0,
        shadow=True,
    )  # fmt: skip
    listener = Listener(settings).start(scp=False)
    try:
        answer = b""
        with socket.create_connection(("127.0.0.1", listener.findings.port), timeout=10) as peer:
            try:
                peer.sendall(b"\x0b" + b"OBX|" * (MAX_REPORT_BYTES // 4 + 1024))
                while chunk := peer.recv(4096):  # until the listener closes the connection
                    answer += chunk
            except ConnectionResetError:  # closed while this side was still sending
                pass
        assert b"MSA|AA" not in answer and listener.stats.findings_refused == 1  # refused, nothing of it kept
        ris = Hl7Destination("127.0.0.1", listener.findings.port)
        assert send_oru(ris, readers_oru("M1", "A1", COVID_19)) is None  # unmatched, acknowledged AA
        with socket.create_connection(("127.0.0.1", listener.findings.port), timeout=10) as peer:
            peer.sendall(b"\x0bMSH|^~\\&|A\x1c\r")  # an MSH too short to answer: rejected, not dropped
            assert b"MSA|AR|" in peer.recv(4096)
        assert (listener.stats.findings_unmatched, listener.stats.findings_refused) == (1, 2)
        idle = socket.create_connection(("127.0.0.1", listener.findings.port), timeout=10)  # open at stop
    finally:
        listener.stop()
    try:
        assert idle.recv(4096) == b""  # closed by the listener's stop
    except ConnectionResetError:
        pass
    finally:
        idle.close()
    assert not listener.findings._thread.is_alive()  # its event loop ended, no task left behind
