"""Shared wire pieces: the lenient request base, usage, stream options."""

from __future__ import annotations

import logging
from importlib.metadata import PackageNotFoundError, version

from pydantic import BaseModel, ConfigDict, Field

logger = logging.getLogger("gateway.requests")


def _system_fingerprint() -> str:
    """The server build, as llama.cpp reports its build: OpenAI's schema wants a string here, never null."""
    try:
        return f"gantry-{version('gantry-llm-gateway')}"
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "gantry"


SYSTEM_FINGERPRINT = _system_fingerprint()


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


class GenerationRequest(OpenAIRequest):
    """Fields chat and text completions share: sampling, stops, streaming, and the vLLM extras."""

    model: str | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    n: int | None = Field(default=1, ge=1, le=128)
    seed: int | None = None
    stop: str | list[str] | None = Field(default=None, description="Up to max_stop_sequences strings; trimmed.")
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    # vLLM-style extras users copy from vLLM examples.
    top_k: int | None = Field(default=None, ge=-1)
    min_p: float | None = Field(default=None, ge=0, le=1)
    repetition_penalty: float | None = Field(default=None, gt=0)
    stop_token_ids: list[int] | None = None
    ignore_eos: bool | None = False
    skip_special_tokens: bool | None = True
