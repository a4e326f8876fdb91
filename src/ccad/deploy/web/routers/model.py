"""``GET /api/v1/model``: the model's card as the page shows it."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from ccad.deploy.web.dependencies import api_key
from ccad.deploy.web.guard import API_PREFIX
from ccad.deploy.web.schemas import ModelCardView

router = APIRouter(prefix=API_PREFIX, tags=["model"], dependencies=[Depends(api_key)])


@router.get("/model", response_model=ModelCardView)
def model(request: Request) -> dict:
    return request.app.state.card_view
