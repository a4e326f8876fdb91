"""One screening service for every adapter: files or bytes in, typed predictions out.

    >>> from ccad.screening import Screener
    >>> screener = Screener.load("bundle/")                      # doctest: +SKIP  (or a run folder, a .keras file)
    >>> [p.predicted_class for p in screener.screen(["xray.png", "scan.dcm"])]   # doctest: +SKIP

:meth:`Screener.load` does the loading and checking (signature, hashes, sessions); the constructor only stores
the parts it is given. The work happens in named steps, each usable alone:

1. :meth:`Screener.decode`: a file path or an :class:`Upload` (bytes) -> the grayscale image, within the intake
   limits (:class:`Intake`: bytes and pixels, read from the header before anything is decoded);
2. :meth:`Screener.prepare`: the model's input with the lung fields (crop, equalize, the views of a two-view
   model), :func:`ccad.preprocessing.pipeline.prepare_full`;
3. :meth:`Screener.score`: one network call per batch, then the decision rule (temperature, threshold), the
   out-of-distribution guard with the lung-QC flags, the severity head (images called positive) and, when
   asked, the class activation map placed back onto the X-ray;
4. :meth:`Screener.screen`: all three over a stream of inputs, decoding on threads, results in input order;
   an unreadable input gets a :class:`~ccad.screening.records.Prediction` with its ``error``, and the stream goes on.

``ccad predict`` (both engines), ``ccad serve``, the DICOM listener, ``ccad evaluate``, ``audit``,
``calibrate`` and ``adapt`` all score through one :class:`Screener`: an output key, an accepted input and a
refusal mean the same in each.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence, Union

import numpy as np

from ccad.errors import ImageReadError, ImageTooLargeError
from ccad.io.images import read_grayscale, read_grayscale_bytes
from ccad.models.ood import screen as guard_screen
from ccad.preprocessing.pipeline import Prepared, prepare_full
from ccad.scoring.predictor import Predictor, load_predictor
from ccad.screening.records import Pictures, Prediction


@dataclass(frozen=True)
class Upload:
    """One image's bytes from a client (an HTTP upload, a DICOM object received): ``name`` is how its result
    is named, ``label`` how an error names it (``files[0]``: never the client's file name)."""

    name: str
    data: bytes
    label: str = "upload"


Source = Union[str, os.PathLike, Upload]


@dataclass(frozen=True)
class Intake:
    """What an input may be before it is decoded: ``max_bytes`` per file and ``max_pixels`` per image (read
    from the header first; None: no limit). A DICOM image outside what ccad scores (a CT, a lateral view,
    :func:`ccad.io.dicom.not_scored_reason`) is refused with its reason unless ``score_anyway`` (research)."""

    max_bytes: int | None = None
    max_pixels: int | None = None
    score_anyway: bool = False
    #: Decode a JPEG 2000 image at a lower resolution level that keeps this many pixels a side (None: in full).
    #: Off by default: on 2,000 px films 512 decodes 4x faster but moves p(COVID) by up to 0.06 (mean 0.02),
    #: as a plain 2x downsampling does (BENCHMARKS.md, "DICOM decoding"): the aim was 0.01.
    decode_min_side: int | None = None


@dataclass(frozen=True)
class Reader:
    """The first two steps alone (what a Ray decode task runs without loading the model): an input ->
    the grayscale image within ``intake`` -> the model's ``size`` x ``size`` input after ``preprocess``."""

    size: int
    preprocess: str
    intake: Intake = Intake()

    def decode(self, source: Source) -> np.ndarray:
        """The (H, W) grayscale image in [0, 1] of a file path or an :class:`Upload`, within :attr:`intake`;
        raises :class:`ImageReadError` (:class:`ImageTooLargeError` past a limit)."""
        limit = self.intake.max_bytes
        if isinstance(source, Upload):
            if limit is not None and len(source.data) > limit:
                raise ImageTooLargeError(f"{source.label}: over the upload limit of {limit / 2**20:g} MB")
            return read_grayscale_bytes(
                source.data, source.label, self.intake.max_pixels, not self.intake.score_anyway, self.min_side
            )
        if limit is not None:
            try:
                size = Path(source).stat().st_size
            except OSError:
                size = 0  # read_grayscale says why it cannot be read
            if size > limit:
                raise ImageTooLargeError(f"{source}: over the file limit of {limit / 2**20:g} MB")
        return read_grayscale(source, self.intake.max_pixels, not self.intake.score_anyway, self.min_side)

    @property
    def min_side(self) -> int | None:
        """The shortest side an image is decoded at when its format can decode less (None: in full)."""
        return self.intake.decode_min_side

    def prepare(self, gray: np.ndarray) -> Prepared:
        """The model's input for a (H, W) grayscale image, with the lung fields (for QC and the outline)."""
        return prepare_full(gray, self.size, self.preprocess, lung_fields=True)

    def read(self, source: Source) -> Prepared:
        """:meth:`decode` then :meth:`prepare`: one full-size image in memory at a time."""
        return self.prepare(self.decode(source))


class Screener:
    """A model ready to screen images, and the steps that do it.

    Args:
        predictor: the network and its parts (:class:`ccad.scoring.predictor.Predictor`, ONNX or Keras).
        intake: the limits an input must meet before it is decoded.
    """

    def __init__(self, predictor: Predictor, intake: Intake = Intake()):
        self.predictor, self.intake = predictor, intake
        self.reader = Reader(predictor.input_size, predictor.preprocess, intake)

    @classmethod
    def load(
        cls,
        model: str | os.PathLike,
        variant: str = "float",
        threads: int = 2,
        verify_key: str | os.PathLike | None = None,
        intake: Intake = Intake(),
    ) -> "Screener":
        """A bundle (ONNX Runtime, no TensorFlow), a run folder or a model file (Keras), loaded and checked:
        with ``verify_key`` only a bundle signed by that key's owner is accepted. ``threads``: the ONNX Runtime
        session's. Loading changes nothing else in the process (see :func:`one_blas_thread`)."""
        return cls(load_predictor(model, variant=variant, verify_key=verify_key, threads=threads), intake)

    # -- what it is -------------------------------------------------------------------------------
    @property
    def classes(self) -> list[str]:
        return self.predictor.classes

    @property
    def positive_class(self) -> str:
        return self.predictor.positive_class

    @property
    def decision(self):
        """The :class:`ccad.models.decision.DecisionRule` from a probability to a class."""
        return self.predictor.decision

    @property
    def card(self):
        """The bundle's :class:`ccad.models.card.ModelCard` (a run's metadata for a Keras model)."""
        return self.predictor.info

    @property
    def warning(self) -> str | None:
        """Why this model should not be used for decisions (an INT8 model whose check failed), or None."""
        return getattr(self.predictor, "warning", None)

    @property
    def variant(self) -> str:
        """Which of a bundle's models runs: ``float`` or ``int8``."""
        return getattr(self.predictor, "variant", "float")

    @property
    def info(self):
        """What the model's card says (a bundle's :class:`~ccad.models.card.ModelCard`, a run's metadata)."""
        return self.predictor.info

    @property
    def input_size(self) -> int:
        return self.predictor.input_size

    @property
    def preprocess(self) -> str:
        return self.predictor.preprocess

    @property
    def views(self) -> int:
        """How many ways the model looks at each X-ray (``--preprocess A|B``)."""
        return self.predictor.views

    @property
    def ood(self):
        """The out-of-distribution guard (:class:`ccad.models.ood.OodGuard`), or None."""
        return self.predictor.ood

    @property
    def severity_scores(self) -> list[str]:
        """The severity head's scores (none without one)."""
        return list(self.predictor.severity.targets) if self.predictor.severity is not None else []

    def rule_text(self) -> str:
        """The decision rule in words: ``covid if p_covid >= 0.732, else ... (specificity-90, chosen on ...)``."""
        return self.decision.describe(self.positive_class)

    # -- the steps --------------------------------------------------------------------------------
    def decode(self, source: Source) -> np.ndarray:
        """:meth:`Reader.decode`: an input's grayscale image, within :attr:`intake`."""
        return self.reader.decode(source)

    def prepare(self, gray: np.ndarray) -> Prepared:
        """:meth:`Reader.prepare`: this model's input for a grayscale image, with the lung fields."""
        return self.reader.prepare(gray)

    def read(self, source: Source) -> Prepared:
        """:meth:`decode` then :meth:`prepare`."""
        return self.prepare(self.decode(source))

    def score(
        self,
        names: Sequence[str],
        prepared: Sequence[Prepared],
        with_heatmaps: bool = False,
        heatmap_class: str | None = None,
    ) -> list[Prediction]:
        """A :class:`Prediction` per prepared image, in batches of the predictor's size. The heatmap is of the
        predicted class, or of ``heatmap_class`` when given (the audit uses the positive class)."""
        out: list[Prediction] = []
        step = self.predictor.batch_size
        for i in range(0, len(prepared), step):
            out += self._score_batch(names[i : i + step], prepared[i : i + step], with_heatmaps, heatmap_class)
        return out

    def screen(
        self, inputs: Iterable[Source], with_heatmaps: bool = False, workers: int | None = None
    ) -> Iterator[Prediction]:
        """A :class:`Prediction` per input, in input order: inputs decoded and prepared on ``workers`` threads
        (default: one per core this process may use, at least two), at most four batches in flight; an
        unreadable one gets its ``error`` and the stream goes on.

        One thread per core, not more: on 2 cores, 2 threads screened 70-71 images/s against 67-70 with 4
        (three alternating runs; BENCHMARKS.md, "Near the hardware's limit"), the extra threads only taking
        turns for the GIL with the scoring thread."""
        step = self.predictor.batch_size
        workers = workers or decode_workers()
        with ThreadPoolExecutor(workers, thread_name_prefix="ccad-decode") as pool:
            pending: list = []
            for source in inputs:
                pending.append((_name(source), pool.submit(self._attempt, source)))
                if len(pending) >= 4 * step:
                    yield from self._score_loaded(pending[:step], with_heatmaps)
                    pending = pending[step:]
            while pending:
                yield from self._score_loaded(pending[:step], with_heatmaps)
                pending = pending[step:]

    # -- inside -----------------------------------------------------------------------------------
    def _attempt(self, source: Source) -> Prepared | str:
        try:
            return self.read(source)
        except ImageReadError as e:
            return str(e)

    def _score_loaded(self, chunk, with_heatmaps: bool) -> Iterator[Prediction]:
        loaded = [(name, future.result()) for name, future in chunk]
        good = [(name, prep) for name, prep in loaded if isinstance(prep, Prepared)]
        scored = iter(self._score_batch([n for n, _ in good], [p for _, p in good], with_heatmaps, None))
        for name, prep in loaded:
            yield next(scored) if isinstance(prep, Prepared) else Prediction(name, error=prep)

    def _score_batch(
        self, names: Sequence[str], prepared: Sequence[Prepared], with_heatmaps: bool, heatmap_class: str | None
    ) -> list[Prediction]:
        if not prepared:
            return []
        predictor = self.predictor
        probabilities, features = predictor.predict(predictor.model_input(np.stack([p.image for p in prepared])))
        calibrated = self.decision.calibrate(probabilities)
        predicted = self.decision.predict(calibrated)
        results = []
        for name, prep, raw, p, k, fmap in zip(names, prepared, probabilities, calibrated, predicted, features):
            result = self._describe(name, prep, raw, p, self.classes[int(k)], fmap.mean(axis=(0, 1)))
            if with_heatmaps:
                result.pictures = self._pictures(prep, fmap, heatmap_class or result.predicted_class)
            results.append(result)
        return results

    def _describe(self, name: str, prep: Prepared, raw, calibrated, predicted: str, pooled) -> Prediction:
        guard = guard_screen(self.predictor.ood, pooled, prep.qc_flags)
        result = Prediction(
            name,
            predicted,
            {c: float(v) for c, v in zip(self.classes, calibrated)},
            in_distribution=guard["in_distribution"],
            ood_distance=guard.get("ood_distance"),
            ood_cutoff=guard.get("ood_cutoff"),
            lung_qc=guard["lung_qc"],
            warning=guard.get("warning"),
            raw_probabilities=raw,
            pooled=pooled,
        )
        if self.predictor.severity is not None and predicted == self.positive_class:
            result.severity = self.predictor.severity(pooled)
        return result

    def _pictures(self, prep: Prepared, fmap: np.ndarray, heatmap_class: str) -> Pictures:
        heat = self.predictor.heatmap(fmap, self.classes.index(heatmap_class))
        outline = prep.fields.at(*prep.gray.shape) if prep.fields is not None else None
        return Pictures(prep.picture, heat, prep.gray, prep.to_original(heat), outline)


def decode_workers() -> int:
    """Threads that decode and prepare images: one per core this process may use, at least two."""
    return max(2, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 2)


def one_blas_thread() -> None:
    """Limit the process's BLAS (OpenBLAS, under numpy) to one thread: what a screening process wants, and so
    what ccad's scoring adapters ask for (``predict``, ``evaluate``, ``serve``, ``dicom listen``, Ray's actors); a
    library user decides for their own process. Screening calls BLAS only for small products, and its idle
    threads spin-wait on the cores the sessions and the decoding need: on 2 cores ``predict FOLDER`` went from
    41 to 49 images/s, with a quarter less CPU time (BENCHMARKS.md, "Near the hardware's limit")."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(1, user_api="blas")


def _name(source: Source) -> str:
    return source.name if isinstance(source, Upload) else str(source)
