"""Room 2 of the listener: scoring. Worker threads take received images from the queue (the spool's inbox),
score them through the :class:`~ccad.screening.service.ScreeningService` (the same preprocessing, decision
rule, out-of-distribution guard and severity head as ``ccad predict``), and put the results into the outbox.

An image that is not a frontal chest radiograph (:func:`.results.not_scored_reason`), or whose pixels cannot be
decoded, is not scored; its report says why. Every image answered success ends as a result in the outbox, or,
when no result at all can be made, in the spool's ``failed/`` folder with its reason: none is dropped. The
structured report and the capture are built (highdicom, pure Python: half of an image's work) in a separate
process, so that the GIL they hold does not stall receiving, scoring and sending; if that process dies they are
built in the worker thread instead.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from functools import partial
from pathlib import Path
from typing import Any, Callable

from ccad.deploy.pacs.reports import put_reports
from ccad.deploy.pacs.results import (
    Algorithm,
    heatmap_capture,
    not_scored_reason,
    result_source,
    structured_report,
)
from ccad.deploy.pacs.scp import reason as intake_reason
from ccad.deploy.pacs.settings import ListenerSettings
from ccad.deploy.pacs.spool import Spool
from ccad.deploy.pacs.study_book import StudyBook
from ccad.io.images import MAX_PIXELS as DEFAULT_MAX_PIXELS
from ccad.screening import ScreeningService, Upload

log = logging.getLogger("ccad.dicom")

#: Timed-out scoring threads that may run on (each burns a core until its work ends).
MAX_ABANDONED = 2


class ScoringTimeout(Exception):
    """An image whose reading and scoring passed ``score_timeout_s``."""


def _builder_start(parent: int) -> None:
    """The result process's start: it dies with the listener (``parent``), even one killed with SIGKILL, and
    its log records and warnings go through the same filter as the listener's."""
    from ccad.deploy.logs import configure_logging

    die_with_parent(parent)
    configure_logging(logging.WARNING)
    import highdicom  # noqa: F401  (imported once, before the first image)


def die_with_parent(parent: int) -> None:
    """Have the kernel kill this process when the thread that started it ends (Linux ``PR_SET_PDEATHSIG``; the
    listener starts it from the thread that calls :meth:`ScoringWorker.start`): a listener killed with SIGKILL
    leaves no result process behind, and with it goes multiprocessing's resource tracker, which waits for its
    last user. When the parent is already gone, exit."""
    import ctypes
    import signal
    import sys

    if sys.platform.startswith("linux"):
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


def _portable(prediction):
    """``prediction`` with only what a result needs (no pooled features, no model-input pictures): what is
    sent to the result process."""
    if prediction is None:
        return None
    from dataclasses import replace

    from ccad.screening.records import Pictures

    pictures = prediction.pictures
    if pictures is not None:
        pictures = Pictures(None, None, pictures.original, pictures.original_heatmap, pictures.lung_outline)
    return replace(prediction, pictures=pictures, pooled=None, raw_probabilities=None)


def result_objects(
    key: str, source, algorithm: Algorithm, prediction, reason: str | None, capture_only: bool = False
) -> list:
    """The SR (and, for a scored image, the capture) of ``source`` (:func:`.results.result_source`); when they
    cannot be built, an SR saying so. ``capture_only`` (per study, where the study's SR says the result): the
    capture of a scored image alone, or nothing when it cannot be drawn."""
    if capture_only:
        try:
            return [heatmap_capture(source, algorithm, prediction)]
        except Exception as e:
            log.warning("image %s: its heatmap capture could not be built (%s)", key, type(e).__name__)
            return []
    try:
        objects = [structured_report(source, algorithm, prediction, reason)]
        if prediction is not None:
            objects.append(heatmap_capture(source, algorithm, prediction))
        return objects
    except Exception as e:
        log.warning(
            "image %s: its result could not be built (%s); sending a report that says so", key, type(e).__name__
        )
        return [
            structured_report(
                source, algorithm, None, f"scored, but the result could not be built ({type(e).__name__})"
            )
        ]


def build_results(
    spool: Path, key: str, source, algorithm: Algorithm, prediction, reason: str | None, capture_only: bool = False
) -> list[Path]:
    """Build the results of one image and write them into the outbox of ``spool`` (in the result process)."""
    return Spool(spool).put_results(key, result_objects(key, source, algorithm, prediction, reason, capture_only))


class ScoringWorker:
    """The scoring threads over ``queue`` and their result process. The constructor stores; :meth:`start`
    starts the result process and ``settings.workers`` threads; ``stopping`` (the listener's) ends them,
    :meth:`stop` waits for them. ``done(key)`` is called once an image has its results or is set aside,
    ``wake()`` once its results are in the outbox."""

    def __init__(
        self,
        settings: ListenerSettings,
        spool: Spool,
        queue: "queue.Queue[Path]",
        stats,
        service: ScreeningService,
        monitor,
        algorithm: Algorithm,
        stopping: threading.Event,
        done: Callable[[str], None],
        wake: Callable[[], None],
    ):
        self.settings, self.spool, self.queue, self.stats = settings, spool, queue, stats
        self.service, self.monitor, self.algorithm = service, monitor, algorithm
        self._stop, self.done, self.wake = stopping, done, wake
        self.builder = None  # the result-building process pool (started by start)
        #: Per study (the default): where each image's outcome waits for its study's answer (:mod:`.studies`).
        self.studies = None if settings.per_image else StudyBook(spool.root / "studies")
        self._reports = {"fhir": self._fhir_report, "hl7": self._hl7_message}
        self._abandoned: list[threading.Thread] = []  # scoring threads past their deadline, still running
        self._threads: list[threading.Thread] = []

    def start(self) -> "ScoringWorker":
        self._start_builder()
        for i in range(self.settings.workers):
            thread = threading.Thread(target=self._work, name=f"ccad-dicom-worker-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        for thread in self._threads:
            thread.join(timeout=30)
        if self.builder is not None:
            self.builder.shutdown()

    @property
    def _sends_images(self) -> bool:
        """Each scored image gets its heatmap capture (per image, its SR too; per study, the study's SR is built
        by :mod:`.studies`): not in shadow mode, where nothing is sent and neither the heatmap nor the result
        process would be used."""
        return not self.settings.shadow

    def _start_builder(self) -> None:
        """The process that builds results (spawned, not forked: the listener has threads), warmed up so the
        first image does not wait for its imports."""
        if not self.settings.result_process or not self._sends_images:
            return
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        self.builder = ProcessPoolExecutor(
            1, multiprocessing.get_context("spawn"), initializer=_builder_start, initargs=(os.getpid(),)
        )
        self.builder.submit(int).result()

    def _work(self) -> None:
        while not self._stop.is_set():
            try:
                path = self.queue.get(timeout=0.5)
            except queue.Empty:
                continue
            try:
                if path.exists():
                    self._process(path)
            finally:
                self.queue.task_done()

    def _process(self, path: Path) -> None:
        """Score one received image and store its results; whatever fails, the image either gets a result
        (a report of why it was not scored, at least) or stays in ``spool/failed/`` with its reason: also one
        whose reading and scoring passes ``score_timeout_s`` (:meth:`_score_in_time`)."""
        key = path.stem
        try:
            ds, prediction, reason = self._score_in_time(key, path.read_bytes())
            if not self.settings.shadow:  # a silent go-live: scored and logged, nothing built to be sent
                self._put_outputs(key, ds, prediction, reason)
        except Exception as e:  # a bad image must never stop the listener, nor vanish
            self.stats.add("failed")
            why = str(e) if isinstance(e, ScoringTimeout) else f"no result could be made ({type(e).__name__})"
            try:
                self.spool.set_aside(path, why)
            except FileNotFoundError:  # queued twice (a resume): the other handling took it
                return
            log.error("image %s: %s; kept in the spool's failed folder", key, why)
            self.done(key)
            return
        path.unlink(missing_ok=True)
        self.done(key)
        if prediction is None:
            self.stats.add("not_scored")
            log.info("image %s not scored: %s", key, reason)
        else:
            self.stats.add("scored")
            try:
                study = {"study": str(ds.StudyInstanceUID), "accession": str(ds.get("AccessionNumber", "") or "")}
                self.monitor.observe(prediction, identity=str(ds.SOPInstanceUID), study=study)
            except Exception as e:  # monitoring must never stop scoring
                log.error("image %s: monitoring failed (%s)", key, type(e).__name__)
            log.info(
                "image %s scored: %s (%.3f)%s",
                key,
                prediction.predicted_class,
                prediction.probabilities[prediction.predicted_class],
                "" if prediction.in_distribution is not False else ", flagged: not a frontal chest X-ray",
            )
        self.wake()

    def _score_in_time(self, key: str, data: bytes):
        """(data set, prediction, reason not scored) of one image, from a thread of its own given
        ``score_timeout_s``: past it :class:`ScoringTimeout`, and the worker goes on to the next image (the
        thread, which cannot be stopped, finishes on its own and its result is dropped). With
        :data:`MAX_ABANDONED` such threads still running, the worker waits for the oldest to end before it
        scores again: received images then wait in the queue, and a full queue answers 0xA700."""
        box: dict[str, Any] = {}

        def work() -> None:
            try:
                box["value"] = self._score(key, data)
            except BaseException as e:  # handed to the worker, which sets the image aside
                box["error"] = e

        self._abandoned = [t for t in self._abandoned if t.is_alive()]
        while len(self._abandoned) >= MAX_ABANDONED:  # they burn the CPU: no more work until one ends
            self._abandoned.pop(0).join()
        thread = threading.Thread(target=work, name=f"ccad-dicom-score-{key}", daemon=True)
        thread.start()
        thread.join(self.settings.score_timeout_s)
        if thread.is_alive():
            self._abandoned.append(thread)
            raise ScoringTimeout(f"reading and scoring took longer than {self.settings.score_timeout_s:g} s")
        if "error" in box:
            raise box["error"]
        return box["value"]

    def _score(self, key: str, data: bytes):
        """(data set, prediction, reason not scored) of one image: parsed once, the rule of what is scored and
        the frame size checked here (the SCP checked the rest), then the service decodes that data set."""
        from ccad.errors import CcadError
        from ccad.io.dicomfile import check_frame_size, read_data_set

        ds = read_data_set(data, "the image")
        why, prediction = not_scored_reason(ds), None
        if why is None:
            try:
                check_frame_size(ds, "the image", self.settings.max_pixels or DEFAULT_MAX_PIXELS)
                upload = Upload(key, data, "the image", ds)
                prediction = self.service.submit(upload, heatmap=self._sends_images).result()
            except CcadError as e:
                why = f"not readable: {intake_reason(e)}"
        return ds, prediction, why

    def _put_outputs(self, key: str, ds, prediction, reason: str | None) -> None:
        """The image's DICOM results into the outbox, then (where the settings name them) its FHIR report and
        its HL7 message; a report that cannot be made is counted and logged, the DICOM results stay."""
        source = result_source(ds)  # what every result copies of the image, each value valid for its VR
        if self.studies is not None:  # per study: the image's capture now; its outcome waits for the study's answer
            if prediction is not None:
                self._put_results(key, source, prediction, reason, capture_only=True)
            self.studies.stage(key, ds, prediction, reason)
            return
        self._put_results(key, source, prediction, reason)
        makers = {name: partial(make, key, source, prediction, reason) for name, make in self._reports.items()}
        put_reports(self.settings, self.stats, f"image {key}", makers)

    def _hl7_message(self, key: str, source, prediction, reason: str | None) -> None:
        """The ORU^R01 for the RIS, into the spool for sending (:mod:`.oru`)."""
        from ccad.deploy.pacs.oru import oru_message

        self.spool.put_hl7(key, oru_message(source, self.algorithm, prediction, reason, key))

    def _fhir_report(self, key: str, source, prediction, reason: str | None) -> None:
        """The FHIR DiagnosticReport and its worklist Task: into the spool for sending, or into the ``fhir``
        folder."""
        from ccad.deploy.pacs.fhir import keep_report

        patient = self.settings.fhir_patient_system
        keep_report(self.settings.fhir, self.spool, key, source, self.algorithm, prediction, reason, patient)

    def _put_results(self, key: str, source, prediction, reason: str | None, capture_only: bool = False) -> None:
        """The image's results (or its capture alone) into the outbox, from ``source`` (:func:`result_source`):
        built by the result process, or here when there is none (or it died: then here from now on)."""
        if self.builder is not None:
            from concurrent.futures.process import BrokenProcessPool

            try:
                self.builder.submit(
                    build_results,
                    self.spool.root,
                    key,
                    source,
                    self.algorithm,
                    _portable(prediction),
                    reason,
                    capture_only,
                ).result()
                return
            except BrokenProcessPool:
                log.error("the result process ended; results are built in the worker threads from now on")
                self.builder = None
        build_results(self.spool.root, key, source, self.algorithm, prediction, reason, capture_only)
