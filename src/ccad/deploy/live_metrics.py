"""Live metrics of a running server (``ccad serve``, ``ccad dicom listen``): Prometheus metrics, the drift state
and a result log. The periodic report read from that log is :mod:`ccad.evaluation.monitor` (``ccad monitor``).

    metrics = LiveMetrics.for_screener(screener, adapter="api", result_log="results.jsonl")
    metrics.observe(prediction, identity=sha256_of_upload)      # after each image is scored
    metrics.registry                                            # what /metrics (or --metrics-port) serves

The metrics (prometheus-client, one registry per server, nothing process-wide):

- ``ccad_images_scored_total{adapter}``, ``ccad_image_errors_total{adapter}``
- ``ccad_decisions_total{adapter,decision}``: the class the decision rule gave
- ``ccad_out_of_distribution_total{adapter}``, ``ccad_lung_qc_flags_total{adapter,flag}``
- ``ccad_score{adapter}``: a histogram of the positive class's probability (before the rule's temperature)
- ``ccad_drift{adapter}`` (1 while the state is ``drift``) and ``ccad_drift_psi{adapter,signal}`` (score,
  distance; :mod:`ccad.evaluation.drift`)
- ``ccad_model_info``: the bundle's card sha256, variant and rule (a constant 1)
- ``ccad_verdicts_total{adapter,outcome}``: the readers' verdicts on results (true/false positive/negative), and
  ``ccad_live_lower95{adapter,measure}``: the Wilson 95% lower bound of the live sensitivity, specificity and
  PPV they give (set once a measure has a verdict); ``ccad_validated{adapter,measure}``: the level the site
  validated (:meth:`LiveMetrics.validated_levels`). ``ccad/deploy/prometheus/ccad-alerts.yml`` alerts when a live
  lower bound falls under its validated level, or drift is on.
- the adapters add their own: requests by status, latency, queue depth (``ccad serve``); associations and
  images received (``ccad dicom listen``).

No metric has a patient field, a file name or a UID in a label: the labels are fixed words.

The result log (``--result-log``) is JSON Lines, one object an image, appended and flushed: the time (UTC), the
adapter, ``image`` (the first 16 hex digits of the sha256 of the SOP Instance UID, or of the upload's bytes), the
decision (and whether it is the positive class), the score, the out-of-distribution flag and distance, the lung-QC
flags and the drift state; from the listener also ``study`` and ``accession`` (the same pseudonyms of the Study
Instance UID and the accession number: what ``ccad validate --results`` joins the readers' findings on). Nothing
else: no patient field, no file name. ``ccad monitor`` reads it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections import OrderedDict
from datetime import datetime, timezone
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ccad.errors import ConfigError
from ccad.evaluation.drift import DRIFT, SIGNALS, DriftCheck
from ccad.evaluation.metrics import MEASURES, OUTCOMES, live_bounds, outcome_of
from ccad.io.files import private_path, pseudonym
from ccad.options import option

log = logging.getLogger("ccad.monitoring")
SCORE_BUCKETS = tuple(round(0.05 * i, 2) for i in range(1, 20)) + (1.0,)
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


#: Results remembered for the readers' verdicts (their ids and whether each was called positive: 17 bytes of key).
REMEMBERED = 100_000


def result_log_option():
    """The ``result_log`` setting of every server that scores (``serve``, ``dicom listen``)."""
    return option(
        None,
        "append one JSON line an image scored (no patient field: hashed UID, time, decision, score, flags, drift "
        "state); ccad monitor reads it",
        metavar="FILE",
    )


def drift_window_option():
    """The ``drift_window`` setting of every server that scores."""
    return option(200, "images in the drift check's rolling window")


def check_drift_window(window: int) -> None:
    if window < 20:
        raise ConfigError(f"`drift_window` must be at least 20 images, got {window}")


#: The live measures a site sets its validated level of, as the settings name them (``validated_sensitivity``).
VALIDATED = ("sensitivity", "specificity")


def validated_option(measure: str):
    """The ``validated_<measure>`` setting of every server that takes readers' verdicts (``serve``, ``dicom
    listen``)."""
    return option(None, f"the {measure} the site validated: the alert rules compare the live lower bound with it")


def validated_of(settings) -> dict[str, float]:
    """The levels ``settings`` give (``{"sensitivity": 0.9}``), each checked to be between 0 and 1: what
    :meth:`LiveMetrics.validated_levels` takes."""
    levels = {m: getattr(settings, f"validated_{m}") for m in VALIDATED}
    for measure, level in levels.items():
        if level is not None and not 0 < level < 1:
            raise ConfigError(f"`validated_{measure}` must be between 0 and 1, got {level}")
    return {m: v for m, v in levels.items() if v is not None}


class ResultLog:
    """Appends one JSON line an image to ``path`` (created, mode 0600, on the first line)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._lock = threading.Lock()

    def check(self) -> "ResultLog":
        """Refuse a log that cannot be written, at start."""
        private_path(self.path, "`result_log`")  # 0600 whatever existed; not a symlink, not another user's
        return self

    def append(self, record: dict) -> None:
        line = (json.dumps(record, separators=(",", ":")) + "\n").encode()
        with self._lock:  # one write() of one line on an O_APPEND descriptor: lines never interleave
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
            try:
                os.write(fd, line)
            finally:
                os.close(fd)


class LiveMetrics:
    """The metrics, drift check and result log of one adapter's model."""

    def __init__(
        self,
        registry: CollectorRegistry,
        adapter: str,
        positive_class: str,
        drift: DriftCheck,
        result_log: ResultLog | None = None,
    ):
        self.registry, self.adapter, self.positive_class = registry, adapter, positive_class
        self.drift, self.result_log = drift, result_log
        self._lock = threading.Lock()
        labels = ("adapter",)
        self.scored = Counter("ccad_images_scored", "Images scored", labels, registry=registry)
        self.errors = Counter("ccad_image_errors", "Images that could not be scored", labels, registry=registry)
        self.decisions = Counter("ccad_decisions", "Decisions by class", (*labels, "decision"), registry=registry)
        self.ood = Counter(
            "ccad_out_of_distribution",
            "Images the guard flagged: not a frontal chest X-ray",
            labels,
            registry=registry,
        )
        self.qc = Counter("ccad_lung_qc_flags", "Lung-check flags", (*labels, "flag"), registry=registry)
        self.score = Histogram(
            "ccad_score", "Probability of the positive class", labels, buckets=SCORE_BUCKETS, registry=registry
        )
        self.drift_gauge = Gauge("ccad_drift", "1 while the drift state is 'drift'", labels, registry=registry)
        self.psi = Gauge(
            "ccad_drift_psi", "Population stability index of the last window", (*labels, "signal"), registry=registry
        )
        self.log_errors = Counter(
            "ccad_result_log_errors", "Result-log lines that could not be written", registry=registry
        )
        self.model_info = Gauge(
            "ccad_model_info", "The model bundle in use", ("card_sha256", "variant", "rule"), registry=registry
        )
        self.verdicts = Counter(
            "ccad_verdicts", "Readers' verdicts on results, by outcome", (*labels, "outcome"), registry=registry
        )
        self.live = Gauge(
            "ccad_live_lower95",
            "Wilson 95% lower bound of the live performance the readers' verdicts give",
            (*labels, "measure"),
            registry=registry,
        )
        self.validated = Gauge(
            "ccad_validated", "The level the site validated", (*labels, "measure"), registry=registry
        )
        self._outcomes = dict.fromkeys(OUTCOMES, 0)
        #: result id (the pseudonym) -> whether it was called positive, for the readers' verdicts to come; the
        #: latest :data:`REMEMBERED` results
        self._called: OrderedDict[str, bool] = OrderedDict()
        #: a study's keys (the pseudonyms of its accession number and of its UID) -> its record, one for both:
        #: whether any of its images was called positive, and the outcome the readers' finding gave (the listener)
        self._studies: OrderedDict[str, dict] = OrderedDict()
        self.verdict_log: ResultLog | None = None
        self._shown: set[str] = set()  # the measures ``ccad_live_lower95`` has

    @classmethod
    def for_screener(
        cls,
        screener,
        adapter: str,
        result_log: str | os.PathLike | None = None,
        window: int = 200,
        registry: CollectorRegistry | None = None,
    ) -> "LiveMetrics":
        """The monitor of a :class:`ccad.screening.Screener`: its guard's reference for the drift check, its
        card for ``ccad_model_info``."""
        guard = screener.ood
        drift = DriftCheck(
            getattr(guard, "reference_scores", None), getattr(guard, "reference_distances", None), window=window
        )
        monitor = cls(
            registry or CollectorRegistry(),
            adapter,
            screener.positive_class,
            drift,
            ResultLog(result_log).check() if result_log else None,
        )
        card = screener.card
        card_hash = (
            hashlib.sha256(json.dumps(card.to_dict(), sort_keys=True).encode()).hexdigest()[:16]
            if card is not None
            else ""
        )
        monitor.model_info.labels(card_hash, screener.variant, screener.decision.rule or "").set(1)
        if not drift.available:
            log.warning(drift.describe())
        return monitor

    def observe(self, prediction, identity: str | bytes | None = None, study: dict[str, str] | None = None) -> None:
        """Count one scored image (a :class:`ccad.screening.records.Prediction`), move the drift window, and append
        to the result log; ``identity`` (a UID or the upload's bytes) is logged only as its pseudonym, and so is
        each of ``study`` (the listener's ``{"study": StudyInstanceUID, "accession": AccessionNumber}``: what
        ``ccad validate --results`` joins the readers' findings on)."""
        a = self.adapter
        if prediction.error is not None:
            self.errors.labels(a).inc()
            return
        score = (
            prediction.raw_probabilities[list(prediction.probabilities).index(self.positive_class)]
            if prediction.raw_probabilities is not None
            else prediction.probabilities[self.positive_class]
        )
        score = float(score)
        self.scored.labels(a).inc()
        self.decisions.labels(a, prediction.predicted_class).inc()
        self.score.labels(a).observe(score)
        if prediction.in_distribution is False:
            self.ood.labels(a).inc()
        for flag in prediction.lung_qc:
            self.qc.labels(a, flag).inc()
        with self._lock:
            change = self.drift.add(score, prediction.ood_distance)
            state = self.drift.state if self.drift.available else None
            for signal in SIGNALS:
                if self.drift.values.get(signal) is not None:
                    self.psi.labels(a, signal).set(self.drift.values[signal])
        self.drift_gauge.labels(a).set(1 if state == DRIFT else 0)
        if change is not None:
            (log.warning if change == DRIFT else log.info)(self.drift.describe())
        called = prediction.predicted_class == self.positive_class
        with self._lock:
            if identity is not None:
                _remember(self._called, pseudonym(identity), called)
            keys = [pseudonym(value) for value in (study or {}).values() if value]
            record = next((self._studies[k] for k in keys if k in self._studies), {"called": False, "outcome": None})
            record["called"] = record["called"] or called
            for key in keys:
                _remember(self._studies, key, record, 2 * REMEMBERED)
        if self.result_log is not None:
            self._append(
                {
                    "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
                    "adapter": a,
                    "image": pseudonym(identity) if identity is not None else None,
                    "decision": prediction.predicted_class,
                    "positive": prediction.predicted_class == self.positive_class,
                    "score": round(score, 6),
                    "in_distribution": prediction.in_distribution,
                    "ood_distance": prediction.ood_distance,
                    "lung_qc": list(prediction.lung_qc),
                    "drift": state,
                    **{name: pseudonym(value) for name, value in (study or {}).items() if value},
                }
            )

    def validated_levels(self, **levels: float) -> None:
        """The levels the site validated (``sensitivity=0.9``, ``specificity=...``, ``ppv=...``): what the alert
        rules compare the live lower bounds with."""
        for measure, level in levels.items():
            if measure not in MEASURES:
                raise ConfigError(f"`{measure}` is not one of {', '.join(MEASURES)}")
            self.validated.labels(self.adapter, measure).set(level)

    def verdict(self, called_positive: bool, truly_positive: bool, replaces: str | None = None) -> str:
        """One reader's verdict on one result: the model called it positive or not, the reader found the positive
        class or not (``replaces``: the outcome an earlier verdict on it gave). Updates the counts and each
        measure's live lower bound; returns the outcome."""
        outcome = outcome_of(called_positive, truly_positive)
        with self._lock:
            bounds = self._count(outcome, replaces)
        self._show(outcome, bounds)
        return outcome

    def _count(self, outcome: str, replaces: str | None) -> dict:
        """Count ``outcome`` (instead of ``replaces``), under the lock; the live measures now."""
        if replaces is not None:
            self._outcomes[replaces] -= 1
        self._outcomes[outcome] += 1
        return live_bounds(self._outcomes)

    def _show(self, outcome: str, bounds: dict) -> None:
        """The metrics of one more verdict (``ccad_verdicts_total`` counts verdicts given, corrections too)."""
        self.verdicts.labels(self.adapter, outcome).inc()
        for measure in MEASURES:
            if measure in bounds:
                self.live.labels(self.adapter, measure).set(bounds[measure]["ci95"][0])
            elif measure in self._shown:  # a correction left it without a case
                self.live.remove(self.adapter, measure)
        self._shown = set(bounds)

    def verdict_on(self, result_id: str, agrees: bool, finding: str | None = None) -> str | None:
        """A reader's verdict on the result ``result_id`` (the pseudonym its answer carried): agrees with the
        decision or not, and the reader's finding (a class; without it a disagreement means the other side of
        the positive class). Returns the outcome (``true_positive``...), or None for a result this server does not
        remember. The verdict log keeps the pseudonym, the verdict and the outcome: no patient field."""
        with self._lock:
            called = self._called.get(result_id)
        if called is None:
            return None
        truly = (finding == self.positive_class) if finding is not None else (called if agrees else not called)
        outcome = self.verdict(called_positive=called, truly_positive=truly)
        if self.verdict_log is not None:
            time = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
            record = {"time": time, "adapter": self.adapter, "image": result_id, "agrees": agrees}
            self.verdict_log.append({**record, "finding": finding, "outcome": outcome})
        return outcome

    def finding_on(self, keys: list[str], truly_positive: bool) -> str | None:
        """The readers' finding on a study, by its keys (the pseudonyms of its accession number and of its UID):
        the study was called positive when any of its images was. Returns the outcome, or None for a study not
        remembered; a later finding (a corrected report) replaces the study's earlier outcome."""
        with self._lock:
            study = next((self._studies[k] for k in keys if k in self._studies), None)
            if study is None:
                return None
            outcome = outcome_of(study["called"], truly_positive)
            bounds = self._count(outcome, study["outcome"])
            study["outcome"] = outcome
        self._show(outcome, bounds)
        return outcome

    def _append(self, record: dict) -> None:
        """A line of the result log; a disk that refuses it is logged and counted, and the image's result
        still goes out."""
        try:
            self.result_log.append(record)
        except OSError as e:
            self.log_errors.inc()
            log.error("result log %s: cannot append (%s)", self.result_log.path, e.strerror)


def _remember(memory: OrderedDict, key: str, value, most: int = REMEMBERED) -> None:
    """``memory[key] = value``, the newest last, the oldest forgotten past ``most``."""
    memory[key] = value
    memory.move_to_end(key)
    while len(memory) > most:
        memory.popitem(last=False)
