"""Dynamic micro-batching: images from concurrent requests scored in one ONNX Runtime call.

One thread owns the model. It takes the first waiting image, gathers whatever else arrives within
``wait_s`` (up to ``max_batch`` images), scores them together with
:meth:`ccad.screening.Screener.score` and resolves each caller's future. A lone request waits at
most ``wait_s`` more than it would alone; under load the model runs full batches, which on a CPU is
several times the throughput of one image a call. Heatmaps are drawn for the images that asked for one.
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass

from ccad.preprocessing.pipeline import Prepared


@dataclass
class _Item:
    name: str
    prepared: Prepared
    heatmap: bool
    future: Future


class MicroBatcher:
    """``MicroBatcher(screener).start()``: the constructor stores, :meth:`start` starts the scoring thread."""

    def __init__(self, screener, max_batch: int = 16, wait_s: float = 0.005):
        self.screener, self.max_batch, self.wait_s = screener, max_batch, wait_s
        self._queue: queue.Queue[_Item | None] = queue.Queue()
        self.batches = self.images = 0
        self._thread: threading.Thread | None = None

    def start(self) -> "MicroBatcher":
        self._thread = threading.Thread(target=self._run, name="ccad-batcher", daemon=True)
        self._thread.start()
        return self

    def submit(self, name: str, prepared: Prepared, heatmap: bool = False) -> Future:
        """A future of the image's :class:`ccad.screening.records.Prediction`."""
        future: Future = Future()
        self._queue.put(_Item(name, prepared, heatmap, future))
        return future

    def close(self) -> None:
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            deadline = time.monotonic() + self.wait_s
            while len(batch) < self.max_batch:
                remaining = deadline - time.monotonic()
                try:
                    item = self._queue.get(timeout=max(remaining, 0)) if remaining > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._queue.put(None)  # close after this batch
                    break
                batch.append(item)
            self._score(batch)

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
