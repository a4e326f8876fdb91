"""A result per study (the default of ``dicom listen``; ``--study-window S``): the images of one study are
gathered, and once none has arrived for ``S`` seconds (or on a flush: :meth:`StudyGatherer.flush`, ``ccad dicom
flush``) the study is answered once: a study-level SR that references every image, its FHIR report and its HL7
message.

The rule: the study's answer is that of its image called the positive class with the highest p(positive class),
else of its scored image with the highest p(positive class); the study is positive when any scored image was
called so. Images not scored (a lateral view, a CT) are listed in the SR with why. Each image's outcome waits in
the spool (:mod:`.study_book`) until the study is answered, and stays there so that a late image re-opens it.
The SR's SOP Instance UID is derived from the study, the model and the set of outcomes: a study sent again gives
the same set, and nothing new is sent; a late image (or a changed outcome) gives a new version that names its
predecessor (Predecessor Documents Sequence), and the FHIR report and Task, whose ids are the study's, are
replaced.
"""

from __future__ import annotations

import copy
import logging
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
    sr_content,
)
from ccad.deploy.pacs.study_book import SOURCE, StudyBook, digest
from ccad.io.files import write_text
from ccad.screening.records import Prediction

#: Why a study could not be answered (a person looks; it is tried again every half second).
NOT_ANSWERED = "not-answered.txt"
#: How often the gatherer looks for studies to prune (seconds); and once when it starts.
PRUNE_EVERY_S = 600.0


def study_answer(outcomes: list[dict[str, Any]], positive: str) -> dict[str, Any] | None:
    """The outcome that answers the study (None: none scored): one called ``positive`` if any (with a decision
    rule other than a threshold on p(``positive``), the image with the highest p may have been called another
    class), the one with the highest p(``positive``) among them."""
    scored = [o for o in outcomes if o.get("probabilities")]
    if not scored:
        return None
    return max(
        scored, key=lambda o: (o["predicted_class"] == positive, o["probabilities"].get(positive, 0.0), o["key"])
    )


def study_report(folder: Path, book: StudyBook, algorithm: Algorithm, outcomes: list[dict[str, Any]], source=None):
    """The study-level SR of the study in ``folder`` made of ``outcomes`` (:meth:`StudyBook.snapshot`): a group per
    image (its result, or why it was not scored), the study's answer first; the previous version, if any, as its
    predecessor. ``source``: the study's copied attributes (:func:`read_source`), read here when not given."""
    import highdicom as hd

    source = read_source(folder) if source is None else source
    answer = study_answer(outcomes, algorithm.positive_class)
    groups = [_image_group(source, o, algorithm, o is answer) for o in sorted(outcomes, key=lambda o: o is not answer)]
    evidence = [_evidence(source, o) for o in outcomes]
    previous = _previous(book.published(folder))
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
        sop_instance_uid=_uid(study, algorithm, f"study-sr {digest(outcomes)}"),
        instance_number=1,
        manufacturer="ccad",
        is_complete=True,
        previous_versions=previous,
        series_description="ccad study result (not for diagnosis)",
    )
    sr.SpecificCharacterSet = source.SpecificCharacterSet
    return sr, answer


def _previous(record: dict[str, Any] | None) -> list | None:
    """The previous version's SR as the Predecessor Documents Sequence names it: its UIDs (None: no answer yet)."""
    from pydicom.dataset import Dataset

    if not record or "sr" not in record:
        return None
    sr = Dataset()
    for name, value in record["sr"].items():
        setattr(sr, name, value)
    return [sr]


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
        """A study waits for its answer (not one that fails to be answered: it keeps its reason, tried again)."""
        with self._lock:  # not while the gatherer answers: the two would record the same answer
            return any(folder.name not in self._failing for folder in self.book.due(0.0))

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
                        try:
                            write_text(folder / NOT_ANSWERED, f"could not be answered ({type(e).__name__})\n")
                        except OSError:  # a disk that refuses this too: the log said it
                            pass
                    self._failing[folder.name] = type(e).__name__
        if due:
            self.wake()
        return len(due)

    def _answer_one(self, folder: Path) -> None:
        """The study's SR into the outbox, then its FHIR report and HL7 message where the settings name them."""
        outcomes, newest = self.book.snapshot(folder)  # what this answer is made of: an image staged since re-opens it
        made_of = digest(outcomes)
        copied = read_source(folder)
        sr, answer = study_report(folder, self.book, self.algorithm, outcomes, copied)
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

            message = oru_message(source, self.algorithm, prediction, reason, f"{folder.name}-{made_of[:12]}")
            self.spool.put_hl7(folder.name, message)

        put_reports(self.settings, self.stats, f"study {folder.name}", {"fhir": fhir, "hl7": hl7})
        self.book.publish(folder, outcomes, newest, sr)
        self._failing.pop(folder.name, None)
        (folder / NOT_ANSWERED).unlink(missing_ok=True)
        self.stats.add("studies_answered")
        log.info("study %s answered (%d images)", folder.name, len(outcomes))
