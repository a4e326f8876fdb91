"""``POST /api/v1/predict``: up to 16 X-rays (multipart ``files``), each screened; ``heatmap=true`` adds the
pictures. The guard has checked the key, the type, admission and the body's size before this runs."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, HTTPException, Request

from ccad.deploy.web.dependencies import Metrics, Service, Settings, Summary, api_key
from ccad.deploy.web.guard import API_PREFIX
from ccad.deploy.web.intake import MAX_FILES, read_form
from ccad.deploy.web.schemas import PredictAnswer, Problem, Result
from ccad.deploy.web.service import screen_uploads
from ccad.errors import ImageReadError, ImageTooLargeError, NotScoredError

router = APIRouter(prefix=API_PREFIX, tags=["model"], dependencies=[Depends(api_key)])

_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["files"],
                    "properties": {
                        "files": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                            "maxItems": MAX_FILES,
                            "description": "PNG, JPEG, TIFF, BMP or DICOM chest X-rays",
                        },
                        "heatmap": {"type": "boolean", "default": False},
                    },
                }
            }
        },
    }
}
_PROBLEMS = {
    code: {"model": Problem, "description": text}
    for code, text in {
        400: "not a readable image, or a malformed form",
        401: "missing or wrong API key",
        408: "the body did not arrive in time",
        413: "over a size or pixel limit",
        415: "not multipart/form-data, or not an image type",
        422: "a DICOM image outside what ccad scores (not CR/DX, not a frontal chest view): not scored",
        503: "busy or timed out: retry (Retry-After)",
    }.items()
}


@router.post(
    "/predict",
    response_model=PredictAnswer,
    response_model_exclude_unset=True,
    openapi_extra=_BODY,
    responses=_PROBLEMS,
)
async def predict(
    request: Request, service: Service, monitor: Metrics, config: Settings, model: Summary
) -> PredictAnswer:
    uploads, heatmap = await read_form(request, config)
    try:
        results = await asyncio.wait_for(screen_uploads(service, monitor, uploads, heatmap), config.timeout_s)
    except asyncio.TimeoutError:
        raise HTTPException(503, "inference timed out; retry shortly", headers={"Retry-After": "5"})
    except ImageTooLargeError as e:
        raise HTTPException(413, str(e))
    except NotScoredError as e:  # a DICOM image outside what ccad scores: well-formed, but not scored
        raise HTTPException(422, str(e))
    except ImageReadError as e:
        raise HTTPException(400, str(e))
    return PredictAnswer(
        results=[Result(**result) for result in results], model=model, note="Screening aid, not a diagnosis."
    )
