"""``POST /api/v1/verdicts``: a reader's verdict on a result this server gave (by its ``result_id``), counted
into the live sensitivity, specificity and PPV that ``/metrics`` exposes and the alert rules watch; kept in the
verdict log by the result's pseudonym, with no patient field."""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException

from ccad.deploy.web.dependencies import Metrics, Summary, api_key
from ccad.deploy.web.guard import API_PREFIX
from ccad.deploy.web.schemas import Problem, VerdictAnswer, VerdictIn

router = APIRouter(prefix=API_PREFIX, tags=["model"], dependencies=[Depends(api_key)])


@router.post(
    "/verdicts",
    status_code=201,
    response_model=VerdictAnswer,
    responses={404: {"model": Problem, "description": "no result with that id on this server"}},
)
def verdict(given: VerdictIn, metrics: Metrics, model: Summary) -> VerdictAnswer:
    if given.finding is not None and given.finding not in model.classes:
        raise HTTPException(422, f"finding must be one of {', '.join(model.classes)}")
    outcome = metrics.verdict_on(given.result_id, given.verdict == "agree", given.finding)
    if outcome is None:
        raise HTTPException(404, "no result with that id on this server (since it started, the latest 100,000)")
    return VerdictAnswer(result_id=given.result_id, outcome=outcome)
