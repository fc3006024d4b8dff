"""Wire schemas for POST /v1/chat/completions (requests lenient, responses exact)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, model_serializer

from gateway.schemas.common import SYSTEM_FINGERPRINT, Bool, GenerationRequest, OptionalInt, Usage, WireModel


class ContentPart(WireModel):
    type: str
    text: str | None = None


class FunctionCall(WireModel):
    name: str
    arguments: str | dict[str, Any] = "{}"


class ToolCall(WireModel):
    id: str | None = None
    type: str = "function"
    function: FunctionCall


class ChatMessage(WireModel):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None


class ChatCompletionRequest(GenerationRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: OptionalInt = Field(default=None, ge=1)
    max_completion_tokens: OptionalInt = Field(default=None, ge=1)
    logprobs: Bool | None = False
    top_logprobs: OptionalInt = Field(default=None, ge=0, le=20)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: Bool | None = None
    response_format: dict[str, Any] | None = None
    chat_template_kwargs: dict[str, Any] | None = None


# ---- responses --------------------------------------------------------------------------------


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprob] | None = None
    refusal: list[TokenLogprob] | None = None


def _drop_none(handler: Any, value: Any, keep: tuple[str, ...] = ()) -> dict[str, Any]:
    # The serializers calling this have no return annotation on purpose: pydantic then documents the
    # model's fields in the OpenAPI document instead of a bare `dict`.
    return {k: v for k, v in handler(value).items() if v is not None or k in keep}


class FunctionOut(BaseModel):
    name: str
    arguments: str  # always a JSON-encoded string, never an object


class ToolCallOut(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionOut


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None = None
    refusal: str | None = None  # required by OpenAI's schema (nullable): we have no refusal channel, always null
    tool_calls: list[ToolCallOut] | None = None
    reasoning_content: str | None = None
    reasoning: str | None = None  # the newer name for the same text; clients read one or the other

    @model_serializer(mode="wrap")
    def _omit_absent(self, handler: Any):
        return _drop_none(handler, self, keep=("content", "refusal"))


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: str | None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    system_fingerprint: str = SYSTEM_FINGERPRINT


class DeltaFunction(BaseModel):
    name: str | None = None
    arguments: str | None = None

    @model_serializer(mode="wrap")
    def _omit_absent(self, handler: Any):
        return _drop_none(handler, self)


class DeltaToolCall(BaseModel):
    """First delta of a call: index, id, type, name and arguments ""; later ones: index + arguments."""

    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: DeltaFunction

    @model_serializer(mode="wrap")
    def _omit_absent(self, handler: Any):
        return _drop_none(handler, self)


class DeltaMessage(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    reasoning_content: str | None = None
    reasoning: str | None = None
    tool_calls: list[DeltaToolCall] | None = None

    @model_serializer(mode="wrap")
    def _drop_unset(self, handler: Any):
        # Only the fields a delta actually carries go on the wire; the last delta is {}.
        return _drop_none(handler, self)


class ChunkChoice(BaseModel):
    index: int
    delta: DeltaMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: str | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None
    system_fingerprint: str = SYSTEM_FINGERPRINT

    def to_json(self) -> str:
        return self.model_dump_json(exclude={"usage"} if self.usage is None else None)
