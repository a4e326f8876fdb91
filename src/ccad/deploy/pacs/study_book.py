"""The spool's ``studies/`` folder: where each image's outcome waits for its study's answer (:mod:`.studies`).

One folder a study (named by a hash of its Study Instance UID), holding:

- ``KEY.json``: one image's outcome (its UIDs and result, or why it was not scored: no pixel, no patient field);
- ``source.dcm``: the study's copied attributes (its first image's, no pixel), which the study's SR copies;
- ``published.json``: the answer sent: the images (keys) and the digest of the outcomes it was made of, and its
  SR's UIDs (the predecessor a later version names). An image not among its keys re-opens the study, whenever
  it was staged (while the answer was being made too); so does an outcome written again after the newest one
  the answer was made of (the record's modification time);
- ``flush-requested``: ``ccad dicom flush`` asks for the study to be answered without its window.

An answered study keeps its outcomes, so that a late image gives a new version made of all its images. Once
answered ``keep_s`` ago with nothing newer, :meth:`StudyBook.prune` removes its ``source.dcm``: the patient's
attributes leave the spool; a late image brings its own.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from ccad.deploy.pacs.results import result_source
from ccad.deploy.pacs.scp import instance_key
from ccad.io.files import atomic_path, write_text
from ccad.screening.records import Prediction

SOURCE, PUBLISHED = "source.dcm", "published.json"
#: A study's flush request (:meth:`StudyBook.request_flush`, ``ccad dicom flush``): answered without its window.
FLUSH = "flush-requested"
#: What the record of an answer keeps of its SR: what a later version's Predecessor Documents Sequence names.
SR_UIDS = ("SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID")
#: A study folder unchanged for this long is passed over until it changes (a change within the file system's
#: time grain, here 1 s or finer, would not show in its time).
SETTLED_AFTER_S = 2.0

log = logging.getLogger("ccad.dicom")


def outcome_of(key: str, ds, prediction: Prediction | None, reason: str | None) -> dict[str, Any]:
    """What a study's answer keeps of one image: its references and its result, no pixel and no patient field."""
    out = {
        "key": key,
        "sop_class": str(ds.SOPClassUID),
        "sop_instance": str(ds.SOPInstanceUID),
        "series": str(ds.SeriesInstanceUID),
        "reason": reason,
    }
    if prediction is not None:
        out.update(
            predicted_class=prediction.predicted_class,
            probabilities=prediction.probabilities,
            in_distribution=prediction.in_distribution,
        )
    return out


def digest(outcomes: list[dict[str, Any]]) -> str:
    """What a study's answer is made of: the same outcomes, the same digest. Probabilities count to 4 decimals
    (as the SR shows them), so that an image scored again in another batch gives the same digest."""
    kept = [
        {**o, "probabilities": {c: round(p, 4) for c, p in o["probabilities"].items()}} if "probabilities" in o else o
        for o in outcomes
    ]
    return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()


def _staged(folder: Path) -> list[Path]:
    """The study's image outcomes: not its answer's record, nor a file an atomic write is still filling."""
    return sorted(p for p in folder.glob("*.json") if p.name != PUBLISHED and not p.name.startswith("."))


class StudyBook:
    """The spool's ``studies/`` folder. The constructor stores; :meth:`stage` keeps an image's outcome,
    :meth:`due` lists the studies to answer, :meth:`snapshot` reads one, :meth:`publish` records an answer sent,
    :meth:`prune` forgets the patient attributes of studies answered long ago. One book is shared by the scoring
    threads and the gatherer: its lock makes staging, a snapshot and pruning one at a time."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self._lock = threading.Lock()
        self._settled: dict[str, int] = {}  # study folder -> its mtime (ns) when last found answered
        self._unreadable: set[str] = set()  # study folders that could not be read (said once)

    def stage(self, key: str, ds, prediction: Prediction | None, reason: str | None) -> Path:
        folder = self.root / instance_key(str(ds.StudyInstanceUID))
        with self._lock:
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            if not (folder / SOURCE).exists():
                with atomic_path(folder / SOURCE) as tmp:
                    result_source(ds).save_as(tmp, implicit_vr=False, little_endian=True)
            write_text(folder / f"{key}.json", json.dumps(outcome_of(key, ds, prediction, reason)))
        return folder

    def snapshot(self, folder: Path) -> tuple[list[dict[str, Any]], float]:
        """(the study's outcomes, the modification time of the newest), read with no image staged meanwhile."""
        with self._lock:
            paths = _staged(folder)
            return [json.loads(p.read_text()) for p in paths], max((p.stat().st_mtime for p in paths), default=0.0)

    def published(self, folder: Path) -> dict[str, Any] | None:
        path = folder / PUBLISHED
        return json.loads(path.read_text()) if path.exists() else None

    def folders(self) -> list[Path]:
        return sorted(p for p in self.root.iterdir() if p.is_dir()) if self.root.is_dir() else []

    def due(self, window_s: float, now: float | None = None) -> list[Path]:
        """The studies whose last image arrived ``window_s`` ago or more (or whose flush was asked for) and whose
        answer is not the one sent. A study found answered is passed over until its folder changes; one whose
        newer outcomes give the same answer (an image sent again) is recorded as answered with them."""
        now = time.time() if now is None else now
        out = []
        for folder in self.folders():
            try:
                if self._due(folder, window_s, now):
                    out.append(folder)
            except (OSError, ValueError) as e:  # damaged or removed under the spool: the others are answered
                if folder.name not in self._unreadable:
                    log.error("study %s: its folder cannot be read (%s); passed over", folder.name, type(e).__name__)
                self._unreadable.add(folder.name)
        return out

    def _due(self, folder: Path, window_s: float, now: float) -> bool:
        changed = folder.stat().st_mtime_ns
        if self._settled.get(folder.name) == changed:
            return False
        staged = _staged(folder)
        newest = max((p.stat().st_mtime for p in staged), default=None)
        if newest is None or (now - newest < window_s and not (folder / FLUSH).exists()):
            return False
        if not self._waiting(folder, staged) or self._same_answer(folder):
            (folder / FLUSH).unlink(missing_ok=True)  # nothing to answer: a request made too late
            if now - changed / 1e9 > SETTLED_AFTER_S:  # a change within the clock's grain would not show
                self._settled[folder.name] = changed
            return False
        self._unreadable.discard(folder.name)
        return True

    def _same_answer(self, folder: Path) -> bool:
        """The outcomes give the answer sent (an image sent again): recorded as answered with them."""
        outcomes, newest = self.snapshot(folder)
        record = self.published(folder) or {}
        if record.get("digest") != digest(outcomes):
            return False
        self._record(folder, {**record, "keys": [o["key"] for o in outcomes]}, newest)
        return True

    def publish(self, folder: Path, outcomes: list[dict[str, Any]], newest: float, sr) -> None:
        """Record the answer sent: the images it was made of (their ``outcomes``, the time of the ``newest``:
        :meth:`snapshot`), their digest, and its SR's UIDs."""
        sr_uids = {
            k: str(sr.get(k)) for k in ("SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID")
        }
        record = {"digest": digest(outcomes), "keys": [o["key"] for o in outcomes], "sr": sr_uids}
        self._record(folder, record, newest)
        (folder / FLUSH).unlink(missing_ok=True)

    @staticmethod
    def _record(folder: Path, record: dict[str, Any], newest: float) -> None:
        write_text(folder / PUBLISHED, json.dumps(record))
        os.utime(folder / PUBLISHED, (newest, newest))

    def request_flush(self, study_uids: list[str] | None = None) -> int:
        """Ask for the studies (``study_uids``; None: every study) that wait for their answer to be answered
        without waiting for their window: the running listener's gatherer does so within a second, or the
        next one to start. Another process may ask (``ccad dicom flush``): the request is a file. How many
        studies wait and were asked for."""
        if study_uids is None:
            folders = self.folders()
        else:
            folders = [self.root / instance_key(uid.strip()) for uid in study_uids]
        asked = 0
        for folder in folders:
            if folder.is_dir() and self._waiting(folder):
                write_text(folder / FLUSH, "")
                asked += 1
        return asked

    def prune(self, keep_s: float, now: float | None = None) -> int:
        """Remove the copied attributes (``source.dcm``: a patient's name among them) of each study answered
        (its answer the one sent) whose files are all older than ``keep_s``; its outcomes (UIDs and results) stay,
        so that a late image gives a new version made of all its images. How many were pruned."""
        now = time.time() if now is None else now
        pruned = 0
        for folder in self.folders():
            with self._lock:
                try:
                    if not (folder / SOURCE).exists() or not (folder / PUBLISHED).exists() or self._waiting(folder):
                        continue  # pruned already, not answered yet, or a newer image waits
                    if now - max(p.stat().st_mtime for p in folder.iterdir()) >= keep_s:
                        (folder / SOURCE).unlink()
                        (folder / "published.dcm").unlink(missing_ok=True)  # kept by ccad before 2026-12-07
                        pruned += 1
                except (OSError, ValueError):  # damaged, or a file going as it was looked at: next time
                    continue
        return pruned

    def _waiting(self, folder: Path, staged: list[Path] | None = None) -> bool:
        """The study has an image its answer was not made of, or an outcome written again since (or no answer);
        ``staged``: its outcomes' files, when the caller has listed them."""
        staged = _staged(folder) if staged is None else staged
        record = self.published(folder)
        if not staged or record is None:
            return bool(staged)
        if {p.stem for p in staged} - set(record.get("keys", [])):
            return True
        return (folder / PUBLISHED).stat().st_mtime < max(p.stat().st_mtime for p in staged)
