"""What the predict route does with a request's uploads once they are checked: each submitted to the app's
:class:`~ccad.screening.service.ScreeningService` (decoded on its pool, scored with the images of concurrent
requests), each result observed by the monitor, and the pictures drawn off the event loop when asked."""

from __future__ import annotations

import asyncio

from starlette.concurrency import run_in_threadpool

from ccad.deploy.live_metrics import LiveMetrics, pseudonym
from ccad.io.pictures import gray_rgb, heatmap_rgba, png_base64
from ccad.screening import ScreeningService, Upload
from ccad.screening.records import Prediction


async def screen_uploads(
    service: ScreeningService, monitor: LiveMetrics, uploads: list[Upload], heatmap: bool
) -> list[dict]:
    """The JSON of each upload's result, in order; the first that cannot be read raises its
    :class:`~ccad.errors.ImageReadError`."""
    predictions = await asyncio.gather(*(asyncio.wrap_future(service.submit(u, heatmap)) for u in uploads))
    for upload, prediction in zip(uploads, predictions):
        monitor.observe(prediction, identity=upload.data)
    results = await run_in_threadpool(render, predictions) if heatmap else [p.to_dict(key="name") for p in predictions]
    for upload, result in zip(uploads, results):  # what a reader's verdict names the result by
        result["result_id"] = pseudonym(upload.data)
    return results


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
