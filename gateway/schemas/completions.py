"""Wire schemas for POST /v1/completions (legacy text completions)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from gateway.schemas.common import SYSTEM_FINGERPRINT, Bool, GenerationRequest, Int, OptionalInt, Usage

PromptField = str | list[str] | list[Int] | list[list[Int]]


class CompletionRequest(GenerationRequest):
    prompt: PromptField
    suffix: str | None = None
    max_tokens: OptionalInt = Field(default=16, ge=0)
    best_of: OptionalInt = Field(default=None, ge=1, le=20)
    logprobs: OptionalInt = Field(default=None, ge=0, le=20)
    echo: Bool | None = False


class CompletionLogprobs(BaseModel):
    tokens: list[str] = Field(default_factory=list)
    token_logprobs: list[float | None] = Field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = Field(default_factory=list)
    text_offset: list[int] = Field(default_factory=list)


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None = None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
    system_fingerprint: str = SYSTEM_FINGERPRINT

    def to_chunk_json(self) -> str:
        return self.model_dump_json(exclude={"usage"} if self.usage is None else None)
