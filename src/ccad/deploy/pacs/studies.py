"""A result per study (``dicom listen --study-window S``): the images of one study are gathered, and once none has
arrived for ``S`` seconds (or on :meth:`StudyBook.flush`) the study is answered once: a study-level SR that
references every image, its FHIR report and its HL7 message.

The rule: the study's answer is that of its scored image with the highest p(positive class); it is positive when
any scored image was called so (the highest p is then of a positive image). Images not scored (a lateral view, a
CT) are listed in the SR with why. Each image's outcome waits in the spool (``studies/STUDY/KEY.json``, no pixel,
and the study's copied attributes in ``source.dcm``) until the study is answered, and stays there so that a late
image re-opens it. The SR's SOP Instance UID is derived from the study, the model and the set of outcomes: a study
sent again gives the same set, and nothing new is sent; a late image (or a changed outcome) gives a new version that
names its predecessor (Predecessor Documents Sequence), and the FHIR report, whose id is the study's, is replaced.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable

from ccad.deploy.pacs.reports import put_reports
from ccad.deploy.pacs.results import (
    SR_SERIES_NUMBER,
    Algorithm,
    _code,
    _uid,
    device_context,
    procedure_reported,
    result_source,
    sr_content,
)
from ccad.deploy.pacs.scp import instance_key
from ccad.io.files import atomic_path, write_text
from ccad.screening.records import Prediction

SOURCE, PUBLISHED = "source.dcm", "published.json"
#: A study's flush request (:meth:`StudyBook.request_flush`, ``ccad dicom flush``): answered without its window.
FLUSH = "flush-requested"
#: How often the gatherer looks for studies to prune (seconds); and once when it starts.
PRUNE_EVERY_S = 600.0


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


def study_answer(outcomes: list[dict[str, Any]], positive: str) -> dict[str, Any] | None:
    """The outcome that answers the study: the scored one with the highest p(``positive``) (None: none scored)."""
    scored = [o for o in outcomes if o.get("probabilities")]
    return max(scored, key=lambda o: (o["probabilities"].get(positive, 0.0), o["key"])) if scored else None


class StudyBook:
    """The spool's ``studies/`` folder. The constructor stores; :meth:`stage` keeps an image's outcome,
    :meth:`due` lists the studies to answer, :meth:`publish` records an answer sent, :meth:`prune` forgets the
    studies answered long ago. One book is shared by the scoring threads and the gatherer: its lock keeps a
    study from being pruned while an image is staged into it."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self._lock = threading.Lock()

    def stage(self, key: str, ds, prediction: Prediction | None, reason: str | None) -> Path:
        folder = self.root / instance_key(str(ds.StudyInstanceUID))
        with self._lock:
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            if not (folder / SOURCE).exists():
                with atomic_path(folder / SOURCE) as tmp:
                    result_source(ds).save_as(tmp, implicit_vr=False, little_endian=True)
            write_text(folder / f"{key}.json", json.dumps(outcome_of(key, ds, prediction, reason)))
        return folder

    def prune(self, keep_s: float, now: float | None = None) -> int:
        """Remove each study answered (its answer the one sent) whose files are all older than ``keep_s``: its
        outcomes and the copied attributes (a patient's name among them) leave the spool. A later image of it
        starts the study afresh, answered from that image alone. How many were removed."""
        import shutil

        now = time.time() if now is None else now
        removed = 0
        for folder in sorted(p for p in self.root.glob("*") if p.is_dir()) if self.root.is_dir() else []:
            with self._lock:
                if not (folder / PUBLISHED).exists() or self._waiting(folder):
                    continue  # not answered yet, or a newer image waits
                if now - max(p.stat().st_mtime for p in folder.iterdir()) >= keep_s:
                    shutil.rmtree(folder)
                    removed += 1
        return removed

    def outcomes(self, folder: Path) -> list[dict[str, Any]]:
        return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json")) if p.name != PUBLISHED]

    def digest(self, folder: Path) -> str:
        """What the study's answer is made of: the same outcomes, the same digest."""
        return hashlib.sha256(json.dumps(self.outcomes(folder), sort_keys=True).encode()).hexdigest()

    def published(self, folder: Path) -> dict[str, Any] | None:
        path = folder / PUBLISHED
        return json.loads(path.read_text()) if path.exists() else None

    def due(self, window_s: float, now: float | None = None) -> list[Path]:
        """The studies whose last image arrived ``window_s`` ago or more and whose answer is not the one sent. A
        study with nothing newer than its answer is passed over on its files' times alone; one whose newer files
        give the same answer (an image sent again) has its answer's time moved on, so it is passed over after."""
        now = time.time() if now is None else now
        out = []
        for folder in sorted(p for p in self.root.glob("*") if p.is_dir()) if self.root.is_dir() else []:
            staged = [p.stat().st_mtime for p in folder.glob("*.json") if p.name != PUBLISHED]
            answered = folder / PUBLISHED
            if not staged or (now - max(staged) < window_s and not (folder / FLUSH).exists()):
                continue
            if answered.exists() and answered.stat().st_mtime >= max(staged):
                continue
            if (self.published(folder) or {}).get("digest") == self.digest(folder):
                os.utime(answered)  # the same answer: nothing new to send
                (folder / FLUSH).unlink(missing_ok=True)
                continue
            out.append(folder)
        return out

    def publish(self, folder: Path, digest: str, sr) -> None:
        """Record the answer sent (and keep its SR, the predecessor of a later version)."""
        with atomic_path(folder / "published.dcm") as tmp:
            sr.save_as(tmp, enforce_file_format=True)
        write_text(folder / PUBLISHED, json.dumps({"digest": digest, "sr_uid": str(sr.SOPInstanceUID)}))
        (folder / FLUSH).unlink(missing_ok=True)

    def request_flush(self, study_uids: list[str] | None = None) -> int:
        """Ask for the studies (``study_uids``; None: every study) that wait for their answer to be answered
        without waiting for their window: the running listener's gatherer does so within a second, or the
        next one to start. Another process may ask (``ccad dicom flush``): the request is a file. How many
        studies wait and were asked for."""
        if study_uids is None:
            folders = [p for p in self.root.glob("*") if p.is_dir()] if self.root.is_dir() else []
        else:
            folders = [self.root / instance_key(uid.strip()) for uid in study_uids]
        asked = 0
        for folder in folders:
            if folder.is_dir() and self._waiting(folder):
                write_text(folder / FLUSH, "")
                asked += 1
        return asked

    @staticmethod
    def _waiting(folder: Path) -> bool:
        """The study has an image newer than its answer (or no answer yet)."""
        staged = [p.stat().st_mtime for p in folder.glob("*.json") if p.name != PUBLISHED]
        answered = folder / PUBLISHED
        return bool(staged) and (not answered.exists() or answered.stat().st_mtime < max(staged))


def study_report(folder: Path, book: StudyBook, algorithm: Algorithm, digest: str, source=None):
    """The study-level SR of the study in ``folder``: a group per image (its result, or why it was not scored),
    the study's answer first; the previous version, if any, as its predecessor. ``source``: the study's copied
    attributes (:func:`read_source`), read here when not given."""
    import highdicom as hd
    import pydicom

    source = read_source(folder) if source is None else source
    outcomes = book.outcomes(folder)
    answer = study_answer(outcomes, algorithm.positive_class)
    groups = [_image_group(source, o, algorithm, o is answer) for o in sorted(outcomes, key=lambda o: o is not answer)]
    evidence = [_evidence(source, o) for o in outcomes]
    previous = [pydicom.dcmread(folder / "published.dcm")] if (folder / "published.dcm").exists() else None
    study = str(source.StudyInstanceUID)
    sr = hd.sr.ComprehensiveSR(
        evidence=evidence,
        content=hd.sr.MeasurementReport(
            observation_context=device_context(algorithm),
            procedure_reported=procedure_reported(answer is not None),
            imaging_measurements=groups,
        ),
        series_instance_uid=_uid(study, algorithm, "study-sr-series"),
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=_uid(study, algorithm, f"study-sr {digest}"),
        instance_number=1,
        manufacturer="ccad",
        is_complete=True,
        previous_versions=previous,
        series_description="ccad study result (not for diagnosis)",
    )
    sr.SpecificCharacterSet = source.SpecificCharacterSet
    return sr, answer


def _prediction(outcome: dict[str, Any]) -> Prediction:
    """A scored image's result, as its outcome kept it."""
    return Prediction(outcome["key"], outcome["predicted_class"], outcome["probabilities"], outcome["in_distribution"])


def _evidence(source, outcome: dict[str, Any]):
    """A data set standing for one image of the study (its UIDs and the study's attributes), as SR evidence."""
    image = copy.deepcopy(source)  # a shallow copy shares its elements: setting a UID would set it in all
    image.SOPClassUID, image.SOPInstanceUID = outcome["sop_class"], outcome["sop_instance"]
    image.SeriesInstanceUID = outcome["series"]
    return image


def _image_group(source, outcome: dict[str, Any], algorithm: Algorithm, answers: bool):
    import highdicom as hd

    prediction = _prediction(outcome) if outcome.get("probabilities") else None
    measurements, evaluations = sr_content(algorithm, prediction, None if prediction else outcome["reason"])
    if answers:
        evaluations.append(
            hd.sr.QualitativeEvaluation(
                _code("study-answer", "The study's answer"),
                _code("highest-p", f"This image: the highest p({algorithm.positive_class}) of the study"),
            )
        )
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=_uid(outcome["sop_instance"], algorithm, "study-tracking"), identifier=f"ccad image {outcome['key']}"
        ),
        algorithm_id=hd.sr.AlgorithmIdentification(algorithm.name, algorithm.version, algorithm.parameters()),
        source_images=[hd.sr.SourceImageForMeasurementGroup(outcome["sop_class"], outcome["sop_instance"])],
        measurements=measurements or None,
        qualitative_evaluations=evaluations,
    )


def read_source(folder: Path):
    """The study's copied attributes (those of its first image, no pixel), as :meth:`StudyBook.stage` kept them."""
    import pydicom

    return pydicom.dcmread(folder / SOURCE, force=True)


def study_source(source):
    """A copy of the study's copied attributes with the study's UID as the instance UID: the FHIR report's id and
    the HL7 message then name the study, the same for every version (a new version replaces the report)."""
    named = copy.deepcopy(source)
    named.SOPInstanceUID = str(source.StudyInstanceUID)
    return named


log = logging.getLogger("ccad.dicom")


class StudyGatherer:
    """The thread that answers the studies that are due (every half second). The constructor stores;
    :meth:`start` starts it, ``stopping`` (the listener's) ends it; :meth:`flush` answers every study now."""

    def __init__(
        self, settings, spool, book: StudyBook, algorithm: Algorithm, stats, stopping: threading.Event, wake: Callable
    ):
        self.settings, self.spool, self.book, self.algorithm, self.stats = settings, spool, book, algorithm, stats
        self._stop, self.wake = stopping, wake
        self._lock = threading.Lock()
        self._failing: dict[str, str] = {}  # study -> the error it last failed with (logged once)
        self._thread: threading.Thread | None = None

    def start(self) -> "StudyGatherer":
        self._thread = threading.Thread(target=self._run, name="ccad-dicom-studies", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._thread.join(timeout=30)

    def pending(self) -> bool:
        """A study waits for its answer."""
        return bool(self.book.due(0.0))

    def flush(self) -> int:
        """Answer every study whose answer is not the one sent, now; how many."""
        return self._answer(0.0)

    def _run(self) -> None:
        pruned_at = None
        while not self._stop.wait(0.5):
            try:
                self._answer(self.settings.study_window_s)
                if pruned_at is None or time.monotonic() - pruned_at >= PRUNE_EVERY_S:
                    pruned_at = time.monotonic()
                    self._prune()
            except Exception as e:  # a spool folder unreadable for a moment: tried again
                log.error("studies: %s; trying again", type(e).__name__)

    def _prune(self) -> None:
        days = self.settings.study_keep_days
        if removed := self.book.prune(days * 86400):
            log.info("studies: %d answered over %g days ago removed from the spool", removed, days)

    def _answer(self, window_s: float) -> int:
        with self._lock:
            due = self.book.due(window_s)
            for folder in due:
                try:
                    self._answer_one(folder)
                except Exception as e:  # this study waits (tried again every half second); the others go on
                    if self._failing.get(folder.name) != type(e).__name__:  # said once, not twice a second
                        log.error("study %s could not be answered (%s); trying again", folder.name, type(e).__name__)
                    self._failing[folder.name] = type(e).__name__
        if due:
            self.wake()
        return len(due)

    def _answer_one(self, folder: Path) -> None:
        """The study's SR into the outbox, then its FHIR report and HL7 message where the settings name them."""
        digest = self.book.digest(folder)
        copied = read_source(folder)
        sr, answer = study_report(folder, self.book, self.algorithm, digest, copied)
        self.spool.put_results(folder.name, [sr])
        prediction = _prediction(answer) if answer else None
        reason = None if answer else "no image of the study was scored"
        source = study_source(copied)

        def fhir() -> None:
            from ccad.deploy.pacs.fhir import keep_report

            fhir, patient = self.settings.fhir, self.settings.fhir_patient_system
            keep_report(fhir, self.spool, folder.name, source, self.algorithm, prediction, reason, patient)

        def hl7() -> None:  # a new version is a new message (its own control ID); the same answer, none
            from ccad.deploy.pacs.oru import oru_message

            message = oru_message(source, self.algorithm, prediction, reason, f"{folder.name}-{digest[:12]}")
            self.spool.put_hl7(folder.name, message)

        put_reports(self.settings, self.stats, f"study {folder.name}", {"fhir": fhir, "hl7": hl7})
        self.book.publish(folder, digest, sr)
        self._failing.pop(folder.name, None)
        self.stats.add("studies_answered")
        log.info("study %s answered (%d images)", folder.name, len(self.book.outcomes(folder)))
