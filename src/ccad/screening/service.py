"""One way in for every adapter: :class:`ScreeningService` decodes on a pool of threads and scores in one
thread that owns the model, gathering the images that arrive together into one network call.

    >>> with ScreeningService(screener) as service:                         # doctest: +SKIP
    ...     future = service.submit(Upload("x", data))                       # one image, from a request
    ...     predictions = list(service.screen(["a.png", "b.dcm"]))            # a stream, in input order

The web app, the DICOM listener (and so ``dicom pull``), ``predict`` and ``evaluate`` (through
:meth:`Screener.screen <ccad.screening.screener.Screener.screen>`) and nothing else score through it: one
rule for the number of decoding threads (:func:`~ccad.io.images.decode_workers`), the intake limits checked in one place
(:class:`~ccad.screening.reader.Reader`), and micro-batching: the scoring thread takes the first waiting
image, gathers whatever else arrives within ``wait_s`` (up to ``max_batch``) and scores them together. A
lone image waits at most ``wait_s`` more than alone; under load the model runs full batches, several times
the throughput of one image a call on a CPU. While the model is busy the next batch fills by itself.
"""

from __future__ import annotations

import hashlib
import queue
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Protocol, Sequence

import numpy as np

from ccad.errors import ImageReadError
from ccad.io.images import decode_workers
from ccad.io.pictures import save_decoded
from ccad.preprocessing.pipeline import Prepared
from ccad.screening.reader import Source, Upload, source_name
from ccad.screening.records import Prediction


class Steps(Protocol):
    """What the service needs of a :class:`~ccad.screening.screener.Screener` (which imports the service: this
    module does not import it back)."""

    predictor: object

    def decode(self, source: Source) -> np.ndarray: ...

    def prepare(self, gray: np.ndarray) -> Prepared: ...

    def score(self, names: Sequence[str], prepared: Sequence[Prepared], with_heatmaps: bool = False) -> list: ...


@dataclass
class _Item:
    name: str
    prepared: Prepared
    heatmap: bool
    future: Future


class ScreeningService:
    """The screener's decoding pool and scoring thread. The constructor stores; :meth:`start` starts both,
    :meth:`close` ends them (or use it as a context manager).

    Args:
        screener: the model and its steps (a :class:`~ccad.screening.screener.Screener`: its ``decode``,
            ``prepare`` and ``score``).
        workers: decoding threads (default :func:`~ccad.io.images.decode_workers`).
        max_batch: the most images in one network call (default: the predictor's batch size).
        wait_s: how long the first image of a batch waits for others (0: it takes what is waiting; while the
            model is busy the next batch fills by itself, so a stream needs no wait; the web app waits a few
            milliseconds for the images of concurrent requests).
        keep: a folder where each upload is kept as the pixels it decoded to (:func:`ccad.io.pictures.save_decoded`).
    """

    def __init__(
        self,
        screener: Steps,
        workers: int | None = None,
        max_batch: int | None = None,
        wait_s: float = 0.0,
        keep: Path | None = None,
    ):
        self.screener, self.workers, self.wait_s, self.keep = screener, workers or decode_workers(), wait_s, keep
        self.max_batch = max_batch or screener.predictor.batch_size
        self.batches = self.images = 0
        self._queue: queue.Queue[_Item | None] = queue.Queue()
        self._pool: ThreadPoolExecutor | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> "ScreeningService":
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="ccad-decode")
        self._thread = threading.Thread(target=self._score_loop, name="ccad-score", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop taking work; what was submitted is finished or cancelled."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(timeout=30)

    def __enter__(self) -> "ScreeningService":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def submit(self, source: Source, heatmap: bool = False) -> "Future[Prediction]":
        """A future of the source's :class:`Prediction`: decoded and prepared on the pool, then scored with what
        else is waiting. An input that cannot be read sets the future's exception (:class:`ImageReadError`)."""
        future: Future = Future()
        self._pool.submit(self._read, source, heatmap, future)
        return future

    def screen(self, inputs: Iterable[Source], heatmap: bool = False) -> Iterator[Prediction]:
        """A :class:`Prediction` per input, in input order, at most four batches in flight; an unreadable one
        gets its ``error`` and the stream goes on."""
        pending: deque = deque()
        for source in inputs:
            pending.append((source_name(source), self.submit(source, heatmap)))
            if len(pending) >= 4 * self.max_batch:
                yield _outcome(*pending.popleft())
        while pending:
            yield _outcome(*pending.popleft())

    # -- inside -----------------------------------------------------------------------------------
    def _read(self, source: Source, heatmap: bool, future: Future) -> None:
        try:
            gray = self.screener.decode(source)
            if self.keep is not None and isinstance(source, Upload):
                save_decoded(gray, self.keep, hashlib.sha256(source.data).hexdigest())
            prepared = self.screener.prepare(gray)
        except BaseException as e:  # the caller hears of it through the future
            future.set_exception(e)
            return
        self._queue.put(_Item(source_name(source), prepared, heatmap, future))

    def _score_loop(self) -> None:
        while (batch := self._gather()) is not None:
            self._score(batch)

    def _gather(self) -> list[_Item] | None:
        """The next batch: the first waiting image and what arrives within ``wait_s`` (None: closed)."""
        first = self._queue.get()
        if first is None:
            return None
        batch, deadline = [first], time.monotonic() + self.wait_s
        while len(batch) < self.max_batch:
            remaining = deadline - time.monotonic()
            try:
                item = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                self._queue.put(None)  # close after this batch
                break
            batch.append(item)
        return batch

    def _score(self, batch: list[_Item]) -> None:
        try:
            predictions = self.screener.score(
                [i.name for i in batch], [i.prepared for i in batch], with_heatmaps=any(i.heatmap for i in batch)
            )
        except Exception as e:  # every caller hears of it; the thread goes on
            for item in batch:
                item.future.set_exception(e)
            return
        self.batches += 1
        self.images += len(batch)
        for item, prediction in zip(batch, predictions):
            if not item.heatmap:
                prediction.pictures = None
            item.future.set_result(prediction)


def _outcome(name: str, future: Future) -> Prediction:
    try:
        return future.result()
    except ImageReadError as e:
        return Prediction(name, error=str(e))
