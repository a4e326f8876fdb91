"""The web app's hold on the screener: a pool that decodes, a micro-batcher that scores the images of
concurrent requests together, and the monitor. Made in :func:`ccad.deploy.web.create_app`, started and
stopped by the app's lifespan."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from ccad.deploy.batching import MicroBatcher
from ccad.deploy.monitoring import Monitor
from ccad.deploy.web.intake import keep
from ccad.deploy.web.settings import ServeSettings
from ccad.io.pictures import gray_rgb, heatmap_rgba, png_base64
from ccad.preprocessing.pipeline import Prepared
from ccad.screening import Screener, Upload
from ccad.screening.records import Prediction


class WebScreening:
    """``WebScreening(screener, settings, monitor)``: the constructor stores; :meth:`start` makes the pool and
    starts the batcher's thread, :meth:`close` ends both."""

    def __init__(self, screener: Screener, settings: ServeSettings, monitor: Monitor):
        self.screener, self.settings, self.monitor = screener, settings, monitor
        self.pool: ThreadPoolExecutor | None = None
        self.batcher: MicroBatcher | None = None

    def start(self) -> "WebScreening":
        self.pool = ThreadPoolExecutor(self.settings.workers, thread_name_prefix="ccad-decode")
        wait_s = self.settings.batch_wait_ms / 1000
        self.batcher = MicroBatcher(self.screener, max_batch=self.settings.max_batch, wait_s=wait_s).start()
        return self

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)
        if self.batcher is not None:
            self.batcher.close()

    async def predict(self, uploads: list[Upload], heatmap: bool) -> list[dict]:
        """Decode in the pool, score in the micro-batcher (with other requests' images), and draw the pictures
        (if asked) in the pool again; each result observed by the monitor."""
        loop = asyncio.get_running_loop()
        prepared = await loop.run_in_executor(self.pool, prepare, self.screener, uploads, self.settings)
        predictions = await asyncio.gather(
            *(asyncio.wrap_future(self.batcher.submit(u.name, p, heatmap)) for u, p in zip(uploads, prepared))
        )
        for upload, prediction in zip(uploads, predictions):
            self.monitor.observe(prediction, identity=upload.data)
        if heatmap:
            return await loop.run_in_executor(self.pool, render, predictions)
        return [prediction.to_dict(key="name") for prediction in predictions]


def prepare(screener: Screener, uploads: list[Upload], settings: ServeSettings) -> list[Prepared]:
    """Decode and prepare one request's files (in a pool thread), one full-size image in memory at a time."""
    prepared = []
    for upload in uploads:
        gray = screener.decode(upload)
        if settings.keep_uploads:
            keep(upload.data, gray, settings.keep_uploads)
        prepared.append(screener.prepare(gray))
        del gray
    return prepared


def render(predictions: list[Prediction]) -> list[dict]:
    """The JSON of each result with its pictures as PNGs: the original X-ray first, then what the model saw."""
    results = []
    for prediction in predictions:
        result = prediction.to_dict(key="name")
        pictures = prediction.pictures
        if pictures is not None:
            result["original"] = png_base64(gray_rgb(pictures.original, pictures.lung_outline))
            result["original_heatmap"] = png_base64(heatmap_rgba(pictures.original_heatmap))
            result["image"] = png_base64(gray_rgb(pictures.image))
            result["heatmap"] = png_base64(heatmap_rgba(pictures.heatmap))
        results.append(result)
    return results
