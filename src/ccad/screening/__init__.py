"""The application layer, between scoring and the adapters (above layer 5, scoring; below layer 6, evaluation).

:class:`~ccad.screening.screener.Screener` is built once from a model (:meth:`Screener.load` does the loading
and checking) and screens files or bytes into typed :class:`~ccad.screening.records.Prediction` records: decoding
within the intake limits (:mod:`~ccad.screening.reader`), the lung step, the network call, the decision, the
guard, severity and heatmaps. :class:`~ccad.screening.service.ScreeningService` is how every adapter screens:
one decoding pool, one scoring thread that batches what arrives together.
:mod:`~ccad.screening.records` holds the records it makes (``Prediction``, ``Pictures``);
:mod:`~ccad.screening.results` writes predictions down the same way for every engine (CSV, table, JSON,
heatmap pictures); :mod:`~ccad.screening.guard` fits the out-of-distribution guard through a screener. The CLI,
the web app, the DICOM listener, Ray batch scoring and ``evaluate`` are adapters over it. May import
:mod:`ccad.scoring` and below; nothing here imports TensorFlow at module level.
"""

from ccad.io.images import decode_workers
from ccad.screening.reader import Intake, Reader, Source, Upload
from ccad.screening.screener import Screener, one_blas_thread
from ccad.screening.service import ScreeningService

__all__ = [
    "Intake",
    "Reader",
    "Screener",
    "ScreeningService",
    "Source",
    "Upload",
    "decode_workers",
    "one_blas_thread",
]
