"""A model ready to screen, and its steps: files or bytes in, typed predictions out.

    >>> from ccad.screening import Screener
    >>> screener = Screener.load("bundle/")                      # doctest: +SKIP  (or a run folder, a .keras file)
    >>> [p.predicted_class for p in screener.screen(["xray.png", "scan.dcm"])]   # doctest: +SKIP

:meth:`Screener.load` does the loading and checking (signature, hashes, sessions); the constructor only stores
the parts it is given. The work happens in named steps, each usable alone:

1. :meth:`Screener.decode`: a file path or an :class:`~ccad.screening.reader.Upload` (bytes) -> the grayscale
   image, within the intake limits (:class:`~ccad.screening.reader.Intake`: bytes and pixels, read from the
   header before anything is decoded);
2. :meth:`Screener.prepare`: the model's input with the lung fields (crop, equalize, the views of a two-view
   model), :func:`ccad.preprocessing.pipeline.prepare_full`;
3. :meth:`Screener.score`: one network call per batch, then the decision rule (temperature, threshold), the
   out-of-distribution guard with the lung-QC flags, the severity head (images called positive) and, when
   asked, the class activation map placed back onto the X-ray;
4. :meth:`Screener.screen`: all three over a stream of inputs through a
   :class:`~ccad.screening.service.ScreeningService` (decoding on threads, scoring in batches), results in
   input order; an unreadable input gets a :class:`~ccad.screening.records.Prediction` with its ``error``, and
   the stream goes on.

``ccad predict`` (both engines), ``ccad serve``, the DICOM listener, ``ccad evaluate``, ``audit``,
``calibrate`` and ``adapt`` all score through one :class:`Screener` (the first four through its service): an
output key, an accepted input and a refusal mean the same in each.
"""

from __future__ import annotations

import os
from typing import Iterable, Iterator, Sequence

import numpy as np

from ccad.models.ood import screen as guard_screen
from ccad.preprocessing.pipeline import Prepared
from ccad.scoring.predictor import Predictor, load_predictor
from ccad.screening.reader import Intake, Reader, Source
from ccad.screening.records import Pictures, Prediction
from ccad.screening.service import ScreeningService


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
        return self.predictor.warning

    @property
    def variant(self) -> str:
        """Which of a bundle's models runs: ``float`` or ``int8``."""
        return self.predictor.variant

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
        """A :class:`Prediction` per input, in input order, through a :class:`ScreeningService` of its own:
        inputs decoded and prepared on ``workers`` threads (default
        :func:`~ccad.io.images.decode_workers`), scored in batches; an unreadable one gets its
        ``error`` and the stream goes on."""
        with ScreeningService(self, workers) as service:
            yield from service.screen(inputs, with_heatmaps)

    # -- inside -----------------------------------------------------------------------------------
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


def one_blas_thread() -> None:
    """Limit the process's BLAS (OpenBLAS, under numpy) to one thread: what a screening process wants, and so
    what ccad's scoring adapters ask for (``predict``, ``evaluate``, ``serve``, ``dicom listen``, Ray's actors); a
    library user decides for their own process. Screening calls BLAS only for small products, and its idle
    threads spin-wait on the cores the sessions and the decoding need: on 2 cores ``predict FOLDER`` went from
    41 to 49 images/s, with a quarter less CPU time (BENCHMARKS.md, "Near the hardware's limit")."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(1, user_api="blas")
