"""``ccad dicom pull`` and the DICOMweb senders against a misbehaving archive, a real HTTP server on 127.0.0.1:
a QIDO-RS answer too large, endless paging, a WADO-RS answer that drips, redirects off the archive (and a STOW
redirect, which must never re-send the SR elsewhere). Every read is bounded in bytes, in time and in count."""

import time

import pytest
from hostile_archive import Archive, answering, dripping, servers, serving

from ccad.deploy.pacs.dicomweb import (
    PAGE,
    ArchiveError,
    TooLarge,
    client,
    fetch_instance,
    find_instances,
    session,
    stow,
)


def test_a_qido_answer_past_its_size_is_abandoned_not_read_whole():
    import tracemalloc

    with servers() as (base, _):
        tracemalloc.start()
        with pytest.raises(TooLarge, match="over 16 MB"):
            list(find_instances(session(), f"{base}/big"))
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak < 40 * 2**20  # 16 MB kept at most, never the 40 MB answer


def test_endless_paging_stops_at_max_instances_and_a_repeated_page_at_once():
    with servers() as (base, _):
        assert len(list(find_instances(session(), f"{base}/endless", max_instances=250))) == 250
        # every page the same: one page of UIDs (CR), none new for DX
        assert len(list(find_instances(session(), f"{base}/same"))) == PAGE


def test_the_search_ends_at_the_runs_deadline():
    with servers() as (base, _):
        found = list(find_instances(session(), f"{base}/endless", deadline=time.monotonic() - 1))
    assert found == []


def test_a_wado_answer_that_drips_is_cut_at_the_fetchs_deadline_not_per_read():
    with servers() as (base, _):
        start = time.monotonic()
        with pytest.raises(ArchiveError, match="longer than the deadline"):
            fetch_instance(session(), f"{base}/drip", "1", "2", "3", max_bytes=2**20, timeout_s=1.0)
        assert time.monotonic() - start < 10  # 100 bytes at 0.2 s each would take 20 s


def test_redirects_are_followed_only_on_the_archives_own_origin():
    with servers() as (base, other_port):
        with pytest.raises(ArchiveError, match="redirected to another host"):
            list(find_instances(session(), f"{base}/away"))
        assert len(list(find_instances(session(), f"{base}/here"))) == PAGE  # the same origin: followed
    assert not [r for r in Archive.requests if r[1] == "/x"]  # nothing reached the other host


def test_a_stow_redirect_is_a_failure_and_the_sr_goes_nowhere_else(tmp_path):
    import numpy as np
    import pydicom
    from helpers import make_xray_dicom

    path = make_xray_dicom(tmp_path / "x.dcm", np.random.default_rng(0).random((32, 32)))
    with servers() as (base, _):
        why = stow(client(base, session(redirects=False)), pydicom.dcmread(path))
    assert why == "the destination answered with a redirect, which is not followed"
    assert [r[0] for r in Archive.requests] == ["POST"]  # one POST, to the archive; none to /stolen


def test_a_pull_against_an_endless_archive_stops_at_max_instances_and_says_so(tmp_path, caplog):
    from helpers import free_port

    from ccad.deploy.pacs.listener import Destination, ListenerSettings
    from ccad.deploy.pacs.pull import pull
    from ccad.models.card import DEFAULT_BUNDLE

    settings = ListenerSettings(
        DEFAULT_BUNDLE,
        Destination("NOBODY", "127.0.0.1", free_port()),
        tmp_path / "spool",
        result_process=False,
        per_image=True,
    )
    with servers() as (base, _):
        counts = pull(settings, f"{base}/endless", since="20260101", timeout_s=60, max_instances=150)
        away = pull(settings, f"{base}/away", since="20260101", timeout_s=60)
        exact = pull(settings, f"{base}/same", since="20260101", timeout_s=60, max_instances=PAGE)
    assert counts["found"] == 150 and counts["search_ended"].startswith("stopped at --max-instances 150")
    assert "the search stopped at --max-instances 150" in [r.getMessage() for r in caplog.records]
    assert counts["refused"] == 150  # the endless archive's "instances" are not DICOM: refused, none scored
    assert away["found"] == 0 and "redirected to another host" in away["search_ended"]
    assert exact["found"] == PAGE and "search_ended" not in exact  # exactly the limit: nothing left behind


def test_a_pull_against_an_endless_archive_stops_at_its_timeout_and_says_so(tmp_path, caplog):
    from helpers import free_port

    from ccad.deploy.pacs.listener import Destination, ListenerSettings
    from ccad.deploy.pacs.pull import pull
    from ccad.models.card import DEFAULT_BUNDLE

    settings = ListenerSettings(
        DEFAULT_BUNDLE,
        Destination("NOBODY", "127.0.0.1", free_port()),
        tmp_path / "spool",
        result_process=False,
        per_image=True,
    )
    with servers() as (base, _):
        # 10 s: time to load the model and search under load, then the endless pages until the deadline
        counts = pull(settings, f"{base}/endless", since="20260101", timeout_s=10, max_instances=10**9)
    assert counts["search_ended"] == "stopped at the --timeout; run again for the rest"
    assert counts["found"] == counts["refused"] > 0
    stopped = [r.getMessage() for r in caplog.records if "deadline" in r.getMessage()]
    assert stopped == [f"the search stopped at the pull's deadline, after {counts['found']} instances"]


def _xray(tmp_path):
    import numpy as np
    import pydicom
    from helpers import make_xray_dicom

    return pydicom.dcmread(make_xray_dicom(tmp_path / "x.dcm", np.random.default_rng(0).random((32, 32))))


def test_a_stow_answer_that_never_comes_fails_at_the_deadline_not_per_read(tmp_path):
    with serving(answering(dripping(600, 0.1))) as base:  # each read is quick, the answer takes a minute
        web = client(base, session(redirects=False))
        assert stow(web, _xray(tmp_path), timeout_s=1.0) == "the destination did not answer within 1 s"


def test_a_stow_answer_past_its_size_is_not_read_whole(tmp_path):
    import tracemalloc

    def flood(out):  # 64 MB, in 1 MB writes
        for _ in range(64):
            out.write(b" " * 2**20)

    xray = _xray(tmp_path)
    with serving(answering(flood)) as base:
        web = client(base, session(redirects=False))
        tracemalloc.start()
        why = stow(web, xray, timeout_s=30)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert why == "the destination's answer is over 1 MB"
    assert peak < 16 * 2**20  # never the 64 MB answer
