"""The OpenAI error envelope, typed for the OpenAPI document (gateway.errors.error_body builds it)."""

from __future__ import annotations

from pydantic import BaseModel, Field


class ErrorDetail(BaseModel):
    message: str = Field(description="What went wrong, for a human.")
    type: str = Field(description="The error class, e.g. `invalid_request_error`, `rate_limit_error`.")
    param: str | None = Field(description="The request field at fault, when there is one.")
    code: str | None = Field(description="A stable code, e.g. `model_not_found`, `context_length_exceeded`.")


class ErrorResponse(BaseModel):
    error: ErrorDetail
