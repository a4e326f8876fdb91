"""``ccad serve``: the CCAD web tool and REST API on ONNX Runtime (no TensorFlow).

:func:`create_app` builds the FastAPI app from :class:`ServeSettings`; nothing is
created at import time, so tests make apps with their own settings.

Routes: ``GET /`` (the page), ``GET /static/*`` (its assets: no CDN),
``POST /api/v1/predict``, ``GET /api/v1/model``, ``GET /healthz``,
``/openapi.json`` and ``/docs``.

Safety:
- an upload over ``max_upload_bytes`` -> 413; an image over ``max_pixels`` -> 413,
  refused from its header before it is decoded; a non-image, corrupt or empty
  file -> 400; a request that is not ``multipart/form-data`` or a file part of a
  non-image content type -> 415;
- uploads stay in memory (Starlette's spooling threshold is raised above the
  upload limit) and are written only to ``keep_uploads`` when it is set, named by
  their sha256; DICOM header fields are never echoed, logged or stored;
- inference runs in a pool of ``workers`` threads with at most ``queue`` more
  requests waiting; past that -> 503 with ``Retry-After``; a request that does
  not finish within ``timeout_s`` -> 503.
"""

import asyncio
import hashlib
import secrets
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.formparsers import MultiPartParser

from ccad.errors import ImageReadError
from ccad.io.files import write_bytes
from ccad.io.images import ImageTooLargeError, read_grayscale_bytes
from ccad.io.pictures import gray_rgb, heatmap_rgba, png_base64
from ccad.scoring.predictor import OnnxPredictor

STATIC = Path(__file__).parent / "web"
API_PREFIX = "/api/v1"
ALLOWED_TYPES = {"image/png", "image/jpeg", "image/jpg", "image/bmp", "image/x-ms-bmp", "image/tiff",
                 "application/dicom", "application/octet-stream", ""}
MAX_FILES = 16


@dataclass
class ServeSettings:
    bundle: Path
    api_key: str | None = None
    variant: str = "float"
    max_upload_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 50_000_000
    workers: int = 2
    queue: int = 32
    timeout_s: float = 30.0
    keep_uploads: Path | None = None


class Capacity:
    """Bounded admission: at most ``workers + queue`` requests inside; the rest are told to retry."""

    def __init__(self, limit: int):
        self._free = limit
        self._lock = threading.Lock()

    def try_enter(self) -> bool:
        with self._lock:
            if self._free == 0:
                return False
            self._free -= 1
            return True

    def leave(self) -> None:
        with self._lock:
            self._free += 1


def model_card_view(card) -> dict[str, Any]:
    """What the page and ``GET /api/v1/model`` show (from a :class:`ccad.models.card.ModelCard`): no file
    hashes or internals."""
    card = card.to_dict()
    keep = ("intended_use", "classes", "positive_class", "input_size", "backbone", "weights", "training_data",
            "evaluation", "preprocessing", "preprocess", "decision", "heatmap", "ood", "lung_segmenter", "versions")
    view = {k: card.get(k) for k in keep}
    view["caveat"] = ("Screening aid for research, not a diagnosis. The metrics come only from the data named; "
                      "images from other hospitals or scanners can score far worse.")
    return view


def create_app(settings: ServeSettings):
    """The FastAPI application for one model bundle."""
    # Keep uploads in memory: Starlette spools a part to a temporary file past 1 MB by default.
    MultiPartParser.spool_max_size = max(MultiPartParser.spool_max_size, settings.max_upload_bytes + 1)
    predictor = OnnxPredictor(settings.bundle, variant=settings.variant, threads=max(1, settings.workers))
    card = model_card_view(predictor.card)
    pool = ThreadPoolExecutor(settings.workers, thread_name_prefix="ccad-infer")
    capacity = Capacity(settings.workers + settings.queue)

    app = FastAPI(title="ccad", version=(predictor.card.versions or {}).get("ccad", ""),
                  description="COVID-19 chest X-ray screening aid (research use, not a diagnosis).")
    app.state.settings, app.state.predictor, app.state.pool = settings, predictor, pool

    def require_key(request: Request) -> None:
        if not settings.api_key:
            return
        given = request.headers.get("x-api-key") or ""
        auth = request.headers.get("authorization") or ""
        if auth.lower().startswith("bearer "):
            given = given or auth[7:].strip()
        if not secrets.compare_digest(given.encode(), settings.api_key.encode()):
            raise HTTPException(401, "missing or wrong API key (X-API-Key header or Authorization: Bearer)")

    @app.middleware("http")
    async def reject_early(request: Request, call_next):
        if request.method == "POST" and request.url.path == f"{API_PREFIX}/predict":
            content_type = request.headers.get("content-type", "")
            if not content_type.startswith("multipart/form-data"):
                return JSONResponse({"detail": "send the files as multipart/form-data in the field 'files'"}, 415)
            length = request.headers.get("content-length")
            if length and length.isdigit() and int(length) > settings.max_upload_bytes * MAX_FILES + 65536:
                return JSONResponse({"detail": "request too large"}, 413)
        return await call_next(request)

    @app.get("/healthz", tags=["service"])
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(f"{API_PREFIX}/model", tags=["model"], dependencies=[Depends(require_key)])
    def model() -> dict[str, Any]:
        return card

    @app.post(f"{API_PREFIX}/predict", tags=["model"], dependencies=[Depends(require_key)])
    async def predict(files: list[UploadFile] = File(..., description="PNG, JPEG or DICOM chest X-rays"),
                      heatmap: bool = Form(False)) -> dict[str, Any]:
        if not files:
            raise HTTPException(400, "no files in the field 'files'")
        if len(files) > MAX_FILES:
            raise HTTPException(413, f"at most {MAX_FILES} files per request")
        uploads = [(f.filename or f"file{i}", await _read_upload(f, settings)) for i, f in enumerate(files)]
        if not capacity.try_enter():
            raise HTTPException(503, "busy: all inference workers are taken; retry shortly",
                                headers={"Retry-After": "1"})
        try:
            loop = asyncio.get_running_loop()
            job = loop.run_in_executor(pool, _score, predictor, uploads, heatmap, settings)
            results = await asyncio.wait_for(job, settings.timeout_s)
        except asyncio.TimeoutError:
            raise HTTPException(503, "inference timed out; retry shortly", headers={"Retry-After": "5"})
        except ImageTooLargeError as e:
            raise HTTPException(413, str(e))
        except ImageReadError as e:
            raise HTTPException(400, str(e))
        finally:
            capacity.leave()
        return {"results": results, "model": {"classes": predictor.classes, "positive_class": predictor.positive_class},
                "note": "Screening aid, not a diagnosis."}

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(STATIC / "index.html")

    @app.on_event("shutdown")
    def stop_pool() -> None:
        pool.shutdown(wait=False, cancel_futures=True)

    return app


async def _read_upload(upload, settings: ServeSettings) -> bytes:
    name = upload.filename or "upload"
    content_type = (upload.content_type or "").split(";")[0].strip().lower()
    if content_type not in ALLOWED_TYPES:
        raise HTTPException(415, f"{name}: content type {content_type!r} is not an image (PNG, JPEG or DICOM)")
    data = await upload.read(settings.max_upload_bytes + 1)
    if len(data) > settings.max_upload_bytes:
        raise HTTPException(413, f"{name}: over the upload limit of {settings.max_upload_bytes // (1024 * 1024)} MB")
    if not data:
        raise HTTPException(400, f"{name}: empty file")
    return data


def _score(predictor: OnnxPredictor, uploads: list[tuple[str, bytes]], with_heatmap: bool,
           settings: ServeSettings) -> list[dict]:
    """Decode, preprocess and score one request's files (in a worker thread): the JSON of each result."""
    prepared = [predictor.prepare(read_grayscale_bytes(data, name, settings.max_pixels)) for name, data in uploads]
    if settings.keep_uploads:
        _keep(uploads, settings.keep_uploads)
    results = []
    for prediction in predictor.score([name for name, _ in uploads], prepared, with_heatmaps=with_heatmap):
        result = prediction.to_dict(key="name")
        pictures = prediction.pictures
        if pictures is not None:  # the original X-ray first; what the model saw as the second view
            result["original"] = png_base64(gray_rgb(pictures.original, pictures.lung_outline))
            result["original_heatmap"] = png_base64(heatmap_rgba(pictures.original_heatmap))
            result["image"] = png_base64(gray_rgb(pictures.image))
            result["heatmap"] = png_base64(heatmap_rgba(pictures.heatmap))
        results.append(result)
    return results


def _keep(uploads: list[tuple[str, bytes]], folder: Path) -> None:
    """Store uploads by content hash only: no client file name, no DICOM field, reaches the disk."""
    for name, data in uploads:
        suffix = Path(name).suffix.lower() if Path(name).suffix.lower() in {".png", ".jpg", ".jpeg", ".dcm"} else ""
        write_bytes(Path(folder) / f"{hashlib.sha256(data).hexdigest()}{suffix}", data)


def serve(settings: ServeSettings, host: str = "127.0.0.1", port: int = 8000) -> None:
    import uvicorn

    uvicorn.run(create_app(settings), host=host, port=port, timeout_keep_alive=5, log_level="info",
                access_log=False, limit_concurrency=64 + settings.workers + settings.queue)
