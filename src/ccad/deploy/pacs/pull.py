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

from ccad.deploy.pacs.dicomweb import TooLarge, client, fetch_instance, find_instances, session
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
) -> dict[str, Any]:
    """Score every CR/DX instance of ``study`` (or of the studies dated ``since``, YYYYMMDD, or later) at the
    DICOMweb service ``source``; returns counts. Waits (at most ``timeout_s``) until every result is sent.
    ``source_auth``: the archive's credentials file (the destination's are never sent to it; without one, the
    environment's ``CCAD_DICOMWEB_SOURCE_TOKEN`` or ``CCAD_DICOMWEB_SOURCE_USER`` / ``_PASSWORD``)."""
    listener = Listener(settings, screener)
    done_path = listener.spool.root / DONE_FILE
    done = set(done_path.read_text().split()) if done_path.exists() else set()
    lock = threading.Lock()

    def record(key: str) -> None:
        with lock, open(done_path, "a") as f:
            f.write(key + "\n")
            f.flush()
            os.fsync(f.fileno())

    listener.on_done = record
    waiting = {p.stem for p in listener.spool.pending_inbox()}  # fetched by a run that died: resumed, not refetched
    seen: set[str] = set()
    listener.start(scp=False)
    http = session(source_auth, settings.ca_file, env="CCAD_DICOMWEB_SOURCE")  # QIDO-RS and WADO-RS alike
    web = client(source, http)
    counts = {"found": 0, "already_done": 0, "in_the_spool": 0, "fetched": 0, "fetch_failures": 0, "refused": 0}
    deadline = time.monotonic() + timeout_s
    try:
        for study_uid, series_uid, instance_uid in find_instances(web, study, since):
            counts["found"] += 1
            key = instance_key(instance_uid)
            if key in done or key in seen:
                counts["already_done"] += 1
                continue
            seen.add(key)
            if key in waiting:
                counts["in_the_spool"] += 1
                continue
            try:
                data = fetch_instance(http, source, study_uid, series_uid, instance_uid, settings.max_dataset_bytes)
            except TooLarge as e:  # refused as the listener refuses it: recorded, not fetched again
                counts["refused"] += 1
                log.warning("image %s refused: %s, the --max-dataset-mb limit", key, e)
                record(key)
                continue
            except Exception as e:  # the archive's error: logged, counted, the pull goes on
                counts["fetch_failures"] += 1
                log.warning("image %s could not be fetched (%s)", key, type(e).__name__)
                continue
            counts["fetched"] += 1
            if listener.take(key, data, timeout_s=max(1.0, deadline - time.monotonic())) is None:
                counts["refused"] += 1  # too large, a bomb, undecodable, or without its UIDs: as the listener would
                record(key)
        while not listener.idle() and time.monotonic() < deadline:
            time.sleep(0.2)
        counts["complete"] = listener.idle()
    finally:
        listener.stop()
    counts.update(
        scored=listener.stats.scored,
        not_scored=listener.stats.not_scored,
        failed=listener.stats.failed,
        sent=listener.stats.sent,
    )
    return counts
