"""The API's answers as pydantic models: the OpenAPI schema is generated from them and matches what is sent.
Routes return them with ``response_model_exclude_unset``: a field a result does not have is left out, as
before (``ood_distance`` without a guard, ``severity`` for an image not called positive)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class Health(BaseModel):
    status: str = Field(examples=["ok"])


class Severity(BaseModel):
    """The severity head's estimates (Cohen's geographic extent and opacity scores) with 95% intervals and a
    band; present only for an image called positive by a model that has the head."""

    model_config = ConfigDict(extra="allow")


class Result(BaseModel):
    """One uploaded image's result; ``error`` is set, and nothing else, for a file that could not be read."""

    name: str = Field(description="the upload's file name (at most 200 characters)")
    result_id: str | None = Field(
        None, description="what a reader's verdict names this result by (POST /api/v1/verdicts): a pseudonym"
    )
    predicted_class: str | None = None
    probabilities: dict[str, float] | None = Field(None, description="after the decision rule's temperature")
    lung_qc: list[str] | None = Field(None, description="lung-field check flags (none: the lungs look usable)")
    in_distribution: bool | None = Field(
        None,
        description="false: not a frontal chest X-ray like those the model was built for (the guard), or no lungs "
        "found; null: the model has no guard",
    )
    ood_distance: float | None = None
    ood_cutoff: float | None = None
    warning: str | None = None
    severity: dict[str, Any] | None = None
    error: str | None = None
    original: str | None = Field(None, description="with heatmap=true: the X-ray as a PNG data URL")
    original_heatmap: str | None = Field(None, description="with heatmap=true: the heatmap on the X-ray (PNG)")
    image: str | None = Field(None, description="with heatmap=true: what the model saw (PNG)")
    heatmap: str | None = Field(None, description="with heatmap=true: its class activation map (PNG)")


class Decision(BaseModel):
    """How a probability becomes the class shown, in words a reader can check against the bars."""

    positive_class: str
    threshold: float | None
    rule: str | None
    fitted_on: str | None
    text: str


class ModelSummary(BaseModel):
    classes: list[str]
    positive_class: str
    decision: Decision
    warning: str | None = Field(None, description="why this model should not be used for decisions")


class PredictAnswer(BaseModel):
    results: list[Result]
    model: ModelSummary
    note: str = Field(examples=["Screening aid, not a diagnosis."])


class ModelCardView(BaseModel):
    """The model's card as the page shows it: no file hashes or internals, no server paths."""

    model_config = ConfigDict(extra="allow")

    classes: list[str]
    positive_class: str
    caveat: str


class VerdictIn(BaseModel):
    """A reader's verdict on one result: agrees with its decision or not, and (optionally) the reader's finding."""

    model_config = ConfigDict(extra="forbid")

    result_id: str = Field(pattern="^[0-9a-f]{16}$", description="the result's result_id")
    verdict: Literal["agree", "disagree"]
    finding: str | None = Field(None, max_length=64, description="the reader's finding: one of the model's classes")


class VerdictAnswer(BaseModel):
    result_id: str
    outcome: Literal["true_positive", "false_negative", "true_negative", "false_positive"]


class Problem(BaseModel):
    detail: Any
