"""What a careless operator or a hostile sender does to a listener: two listeners on one spool, a kill -9, a
result log or kept-upload folder that another user could read, a data set padded with zeros after its pixels."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import free_port
from orthanc import wait_for

from ccad.deploy.pacs.listener import Destination, Listener, ListenerSettings
from ccad.errors import ConfigError
from ccad.models.card import DEFAULT_BUNDLE


def _settings(spool: Path, **kwargs) -> ListenerSettings:
    """A listener's settings, a result per image unless the test says otherwise."""
    kwargs.setdefault("per_image", True)
    return ListenerSettings(DEFAULT_BUNDLE, Destination("NOBODY", "127.0.0.1", free_port()), spool, **kwargs)


def test_a_second_listener_on_the_same_spool_is_refused_in_one_line(tmp_path):
    first = Listener(_settings(tmp_path / "spool", result_process=False)).start(scp=False)
    try:
        with pytest.raises(
            ConfigError, match=rf"spool .* is in use by another ccad listener or pull \(pid {os.getpid()}\)"
        ):
            Listener(_settings(tmp_path / "spool", result_process=False)).start(scp=False)
    finally:
        first.stop()
    again = Listener(_settings(tmp_path / "spool", result_process=False)).start(scp=False)  # released by stop
    again.stop()


def test_a_start_that_fails_leaves_the_spool_free(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError):
            Listener(_settings(tmp_path / "spool", result_process=False, port=port)).start()
    again = Listener(_settings(tmp_path / "spool", result_process=False)).start(scp=False)  # not "in use"
    again.stop()


def test_the_command_refuses_a_spool_another_process_holds(tmp_path):
    holder = Listener(_settings(tmp_path / "spool", result_process=False)).start(scp=False)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "ccad", "dicom", "listen", "--send-to", "X@127.0.0.1:1", "--spool",
             str(tmp_path / "spool"), "--port", str(free_port())],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    finally:
        holder.stop()
    errors = [line for line in done.stderr.splitlines() if "error" in line]
    assert done.returncode == 2 and len(errors) == 1 and "Traceback" not in done.stderr
    assert "is in use by another ccad listener or pull" in errors[0]


def _children(pid: int) -> set[int]:
    """Every process whose parent is ``pid`` (from /proc)."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.add(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_listener_killed_with_sigkill_leaves_no_process_behind(tmp_path):
    port = free_port()
    listener = subprocess.Popen(
        [sys.executable, "-m", "ccad", "dicom", "listen", "--send-to", "X@127.0.0.1:1", "--spool",
         str(tmp_path / "spool"), "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        # the result process and multiprocessing's resource tracker
        children = wait_for(lambda: len(_children(listener.pid)) >= 2 and _children(listener.pid), 120, "children")
        os.kill(listener.pid, signal.SIGKILL)
        listener.wait(30)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(_alive(pid) for pid in children):
            time.sleep(0.2)
        assert not [pid for pid in children if _alive(pid)]
    finally:
        if listener.poll() is None:
            listener.kill()


def test_an_existing_result_log_becomes_private_and_a_symlink_is_refused(tmp_path):
    from ccad.deploy.live_metrics import ResultLog

    log = tmp_path / "results.jsonl"
    log.write_text("")
    os.chmod(log, 0o644)
    ResultLog(log).check()
    assert oct(log.stat().st_mode)[-3:] == "600"
    (tmp_path / "elsewhere.jsonl").write_text("")
    (tmp_path / "link.jsonl").symlink_to(tmp_path / "elsewhere.jsonl")
    with pytest.raises(ConfigError, match="link.jsonl: is a symbolic link"):
        ResultLog(tmp_path / "link.jsonl").check()


def test_an_existing_keep_uploads_folder_becomes_private(tmp_path):
    from ccad.deploy.web import ServeSettings

    folder = tmp_path / "kept"
    folder.mkdir(mode=0o755)
    os.chmod(folder, 0o755)
    ServeSettings(DEFAULT_BUNDLE, keep_uploads=folder).check()
    assert oct(folder.stat().st_mode)[-3:] == "700"
    new = tmp_path / "new" / "kept"
    ServeSettings(DEFAULT_BUNDLE, keep_uploads=new).check()
    assert oct(new.stat().st_mode)[-3:] == "700"


def test_a_data_set_padded_after_its_pixels_is_refused_at_admission(tmp_path):
    import numpy as np
    from helpers import make_xray_dicom

    listener = Listener(_settings(tmp_path / "spool", result_process=False))
    data = make_xray_dicom(tmp_path / "x.dcm", np.random.default_rng(0).random((64, 64))).read_bytes()
    status, header = listener.admission(data + bytes(8 * 2**20))
    assert (status, header) == (0xA700, None) and listener.stats.refused_too_large == 1
    assert listener.admission(data)[0] == 0x0000


def test_an_image_whose_scoring_passes_its_deadline_is_set_aside_and_the_next_is_scored(tmp_path):
    import threading

    import numpy as np
    from helpers import make_xray_dicom

    from ccad.screening import Screener

    screener = Screener.load(DEFAULT_BUNDLE)
    decode, release = screener.decode, threading.Event()

    def stuck_on_the_first(upload):  # as pydicom was on 190 MB of zeros: two minutes on one image
        if upload.name == "stuck":
            release.wait(60)
        return decode(upload)

    screener.decode = stuck_on_the_first
    settings = _settings(tmp_path / "spool", result_process=False, score_timeout_s=1.0)
    listener = Listener(settings, screener).start(scp=False)
    try:
        rng = np.random.default_rng(0)
        for key in ("stuck", "next"):
            assert listener.take(key, make_xray_dicom(tmp_path / f"{key}.dcm", rng.random((64, 64))).read_bytes())
        wait_for(lambda: listener.stats.scored == 1 and listener.stats.failed == 1, 60, "one set aside, one scored")
    finally:
        release.set()
        listener.stop()
    failed = tmp_path / "spool" / "failed"
    assert (failed / "stuck.dcm").exists()
    assert (failed / "stuck.reason.txt").read_text() == "reading and scoring took longer than 1 s\n"
    assert sorted(p.name for p in (tmp_path / "spool" / "outbox").glob("*.dcm")) == ["next-0.dcm", "next-1.dcm"]


def test_the_score_timeout_must_be_positive(tmp_path):
    with pytest.raises(ConfigError, match="`score_timeout_s` must be positive"):
        _settings(tmp_path / "spool", score_timeout_s=0).check()
