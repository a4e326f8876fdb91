"""``ccad dicom pull``: find chest X-rays in a DICOMweb archive (QIDO-RS), fetch them (WADO-RS) and score
them through the listener's path, results sent as the listener sends them.

    ccad dicom pull --from https://pacs/dicom-web --since 2026-12-01 --send-to dicomweb+https://pacs/dicom-web

Every instance is read as it arrives and abandoned past ``--max-dataset-mb``, then passes the listener's
admission checks (inflated size, UIDs) before it is spooled. Bounded in memory: one instance is fetched at a
time, and fetching waits while ``--queue-size`` images wait to be scored. Resumable: each image is recorded in
``SPOOL/pulled.txt`` (by the hash of its SOP Instance UID, as the logs name it) once its results are in the
outbox; a pull run again skips those. An image whose results were made but not yet recorded when the process
died is fetched and scored again, and its results carry the same derived UIDs (and the same file names in the
spool), so the archive gets the same objects, not copies.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

from ccad.deploy.pacs.dicomweb import MAX_INSTANCES, ArchiveError, TooLarge, fetch_instance, find_instances, session
from ccad.deploy.pacs.listener import Listener, ListenerSettings, instance_key

log = logging.getLogger("ccad.dicom")
DONE_FILE = "pulled.txt"


def pull(
    settings: ListenerSettings,
    source: str,
    study: str | None = None,
    since: str | None = None,
    timeout_s: float = 3600.0,
    screener=None,
    source_auth=None,
    max_instances: int = MAX_INSTANCES,
) -> dict[str, Any]:
    """Score every CR/DX instance of ``study`` (or of the studies dated ``since``, YYYYMMDD, or later) at the
    DICOMweb service ``source``; returns counts. Waits (at most ``timeout_s``) until every result is sent.
    ``source_auth``: the archive's credentials file (the destination's are never sent to it; without one, the
    environment's ``CCAD_DICOMWEB_SOURCE_TOKEN`` or ``CCAD_DICOMWEB_SOURCE_USER`` / ``_PASSWORD``). The whole run
    ends by ``timeout_s``: the search, every fetch (each bounded in bytes and time) and the wait; the search
    stops at ``max_instances``. A misbehaving archive (an answer too large, too slow, not JSON, or redirecting
    off the archive) ends the search with its reason in ``counts["search_ended"]``, as do ``max_instances`` and
    the deadline; ``counts["complete"]``: every image taken has its results sent."""
    job = _Pull.open(Listener(settings, screener), source, timeout_s)
    job.listener.start(scp=False)
    try:
        http = session(source_auth, settings.ca_file, env="CCAD_DICOMWEB_SOURCE")  # QIDO-RS and WADO-RS alike
        ended: dict = {}
        try:
            for uids in find_instances(http, source, study, since, job.deadline, max_instances, ended=ended):
                job.fetch_and_take(http, *uids)
            if "why" in ended:
                job.counts["search_ended"] = ended["why"]
        except (ArchiveError, OSError) as e:  # requests' errors are OSErrors: the images taken still get results
            job.counts["search_ended"] = str(e) if isinstance(e, ArchiveError) else type(e).__name__
            log.warning("the search of the archive ended: %s", job.counts["search_ended"])
        job.counts["complete"] = job.wait()
    finally:
        job.listener.stop()
    stats = job.listener.stats
    job.counts.update(scored=stats.scored, not_scored=stats.not_scored, failed=stats.failed, sent=stats.sent)
    return job.counts


class _Pull:
    """One pull's state: what earlier runs finished (``pulled.txt``, appended and synced as each finishes), what
    waits in the spool from a run that died (resumed, not fetched again), and the counts."""

    def __init__(self, listener: Listener, source: str, done: set[str], waiting: set[str], deadline: float):
        self.listener, self.source, self.done, self.waiting, self.deadline = listener, source, done, waiting, deadline
        self.done_path = listener.spool.root / DONE_FILE
        self.seen: set[str] = set()
        self.lock = threading.Lock()
        self.counts = dict.fromkeys(
            ("found", "already_done", "in_the_spool", "fetched", "fetch_failures", "refused"), 0
        )

    @classmethod
    def open(cls, listener: Listener, source: str, timeout_s: float) -> "_Pull":
        """Read what earlier runs left, and have the listener record each image as it finishes."""
        done_path = listener.spool.root / DONE_FILE
        done = set(done_path.read_text().split()) if done_path.exists() else set()
        waiting = {p.stem for p in listener.spool.pending_inbox()}
        job = cls(listener, source, done, waiting, time.monotonic() + timeout_s)
        listener.on_done = job.record
        return job

    def record(self, key: str) -> None:
        with self.lock, open(self.done_path, "a") as f:
            f.write(key + "\n")
            f.flush()
            os.fsync(f.fileno())

    def fetch_and_take(self, http, study_uid: str, series_uid: str, instance_uid: str) -> None:
        counts = self.counts
        counts["found"] += 1
        key = instance_key(instance_uid)
        if key in self.done or key in self.seen:
            counts["already_done"] += 1
            return
        self.seen.add(key)
        if key in self.waiting:
            counts["in_the_spool"] += 1
            return
        limit = self.listener.settings.max_dataset_bytes
        timeout_s = max(1.0, min(120.0, self.deadline - time.monotonic()))
        try:
            data = fetch_instance(http, self.source, study_uid, series_uid, instance_uid, limit, timeout_s)
        except TooLarge as e:  # refused as the listener refuses it: recorded, not fetched again
            counts["refused"] += 1
            log.warning("image %s refused: %s, the --max-dataset-mb limit", key, e)
            self.record(key)
            return
        except Exception as e:  # the archive's error: logged, counted, the pull goes on
            counts["fetch_failures"] += 1
            why = str(e) if isinstance(e, ArchiveError) else type(e).__name__
            log.warning("image %s could not be fetched (%s)", key, why)
            return
        counts["fetched"] += 1
        if self.listener.take(key, data, timeout_s=max(1.0, self.deadline - time.monotonic())) is None:
            counts["refused"] += 1  # too large, a bomb, undecodable, or without its UIDs: as the listener would
            self.record(key)

    def wait(self) -> bool:
        """Until every image taken has a result sent, or the deadline; whether all were. Studies are answered
        once the images taken are scored, without waiting for their window: nothing more of them is coming."""
        while self.listener.queue.unfinished_tasks and time.monotonic() < self.deadline:
            time.sleep(0.2)
        self.listener.flush_studies()
        while not self.listener.idle() and time.monotonic() < self.deadline:
            time.sleep(0.2)
        return self.listener.idle()
