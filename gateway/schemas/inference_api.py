"""The Hugging Face Inference API's request and error shapes (POST /models/{id}), for the OpenAPI document.

The route parses its body itself (the output is whatever the pipeline returns, and errors keep this API's
shape), so these models document the wire format rather than validate it.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class InferenceOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    wait_for_model: bool = Field(
        default=False,
        description="Wait for a loading model (up to the server's wait_for_model_seconds) instead of a 503.",
    )
    use_cache: bool | None = Field(default=None, description="Accepted for compatibility; nothing is cached.")


class InferenceRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    inputs: Any = Field(
        description="A string or a list of strings (a batch); question-answering takes "
        '`{"question", "context"}` (or a list of them).'
    )
    parameters: dict[str, Any] | None = Field(
        default=None,
        description="Call parameters of the task's pipeline (e.g. top_k, candidate_labels, max_new_tokens); "
        "over the entry's defaults.",
    )
    options: InferenceOptions | None = Field(default=None, description="Request options.")


class InferenceAPIError(BaseModel):
    error: str = Field(description="What went wrong, for a human.")
    estimated_time: float | None = Field(
        default=None, description="While the model loads (503): seconds until it is likely ready."
    )
