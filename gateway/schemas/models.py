"""Wire schemas for GET /v1/models and GET /v1/models/{id}."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "gantry"
    root: str | None = None
    max_model_len: int | None = None
    status: str | None = None
    details: dict[str, Any] | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard] = Field(default_factory=list)
