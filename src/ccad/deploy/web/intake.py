"""What an upload must be before a pixel is decoded: the multipart form read in memory, then per file the
count, the content type, the size, the format by its bytes and the pixels from the header. Every error names
the part (``files[0]``), never the client's file name or content type."""

from __future__ import annotations

from contextlib import aclosing

from fastapi import HTTPException, Request
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException, MultiPartParser

from ccad.deploy.web.settings import ServeSettings
from ccad.errors import ImageReadError, ImageTooLargeError
from ccad.io.images import image_header
from ccad.screening import Upload

ALLOWED_TYPES = {
    "image/png",
    "image/jpeg",
    "image/jpg",
    "image/bmp",
    "image/x-ms-bmp",
    "image/tiff",
    "application/dicom",
    "application/octet-stream",
    "",
}
MAX_FILES = 16
TRUE, FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off", ""}


async def parse_in_memory(request: Request, settings: ServeSettings):
    """The multipart form, every file part in memory: Starlette's parser spools a part to a temporary file past
    1 MB, and its threshold is a class attribute; this parser's own (an instance attribute) is above the request
    limit, so nothing is patched for the process and no upload reaches the disk."""
    async with aclosing(request.stream()) as stream:
        parser = MultiPartParser(
            request.headers, stream, max_files=MAX_FILES, max_fields=MAX_FILES + 8, max_part_size=64 * 1024
        )
        parser.spool_max_size = settings.max_request_bytes + 1
        return await parser.parse()


async def read_form(request: Request, settings: ServeSettings) -> tuple[list[Upload], bool]:
    """The uploads and the heatmap flag, with every per-file limit checked before any pixel is decoded."""
    try:
        form = await parse_in_memory(request, settings)
    except (MultiPartException, StarletteHTTPException) as e:  # Starlette turns the first into the second
        message = str(getattr(e, "detail", None) or e)[:120]
        over = "Too many" in message or "exceeded" in message
        raise HTTPException(413 if over else 400, message if over else f"malformed multipart body ({message})")
    uploads = [v for k, v in form.multi_items() if k == "files"]
    if not uploads:
        raise HTTPException(400, "no files in the field 'files'")
    if not all(isinstance(u, UploadFile) for u in uploads):
        raise HTTPException(400, "the field 'files' must hold files, not text")
    flag = str(form.get("heatmap", "") or "").strip().lower()
    if flag not in TRUE | FALSE:
        raise HTTPException(400, "heatmap must be true or false")
    files, pixels = [], 0
    for i, upload in enumerate(uploads):
        part = f"files[{i}]"  # what an error answer names: never the client's file name or content type
        data = await _checked_bytes(upload, part, settings)
        # off the event loop: a DICOM's header walk, parse and codestream check take tens of ms (more for a
        # hostile one), which would hold every other connection; the data set is handed on, not parsed again
        width, height, dataset = await run_in_threadpool(_checked_header, data, part, settings)
        pixels += width * height
        if pixels > settings.max_request_pixels:
            raise HTTPException(413, f"the request's images hold over {settings.max_request_pixels:,} pixels in all")
        files.append(Upload((upload.filename or f"file{i}")[:200], data, part, dataset))
    return files, flag in TRUE


async def _checked_bytes(upload: UploadFile, part: str, settings: ServeSettings) -> bytes:
    content_type = (upload.content_type or "").split(";")[0].strip().lower()
    if content_type not in ALLOWED_TYPES:
        raise HTTPException(415, f"{part}: its content type is not an image type (PNG, JPEG, TIFF, BMP or DICOM)")
    data = await upload.read(settings.max_upload_bytes + 1)
    if len(data) > settings.max_upload_bytes:
        raise HTTPException(413, f"{part}: over the upload limit of {settings.max_upload_bytes // 2**20} MB")
    if not data:
        raise HTTPException(400, f"{part}: empty file")
    return data


def _checked_header(data: bytes, part: str, settings: ServeSettings):
    """(width, height, the DICOM data set or None) of one upload, within the pixel limit."""
    try:
        width, height, dataset = image_header(data, part, settings.max_pixels)
    except ImageTooLargeError as e:
        raise HTTPException(413, str(e))
    except ImageReadError as e:  # a header that cannot be read (a corrupt deflate stream, say)
        raise HTTPException(400, str(e))
    if width * height > settings.max_pixels:
        raise HTTPException(413, f"{part}: image is {width}x{height} pixels, over the limit of {settings.max_pixels:,}")
    return width, height, dataset
