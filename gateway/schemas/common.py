"""Shared wire pieces: the lenient request base, usage, stream options."""

from __future__ import annotations

import logging

from pydantic import BaseModel, ConfigDict, Field

logger = logging.getLogger("gateway.requests")


class OpenAIRequest(BaseModel):
    """Requests accept unknown fields (clients send many); they are logged, never a 422."""

    model_config = ConfigDict(extra="allow")

    def log_ignored_fields(self) -> None:
        if self.model_extra:
            logger.info("%s: ignoring unknown fields: %s", type(self).__name__, ", ".join(sorted(self.model_extra)))


class WireModel(BaseModel):
    model_config = ConfigDict(extra="allow")


class StreamOptions(WireModel):
    include_usage: bool | None = False


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, prompt_tokens: int, completion_tokens: int) -> Usage:
        return cls(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
        )


StopField = Field(default=None, description="Up to max_stop_sequences strings; trimmed from output.")
