"""The tutorials' own request and response shapes (POST /generate, POST /), strict on input.

Unlike the OpenAI schemas (lenient: unknown fields are ignored), these forbid unknown fields and take no
coercion ("8" is not a number), because the tutorials' servers answer such requests with 400 and a
`{"detail": …}` body — and a typo in a field name here would otherwise silently fall back to a default.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, field_validator

from gateway.schemas.common import reject_lone_surrogates

_STRICT = ConfigDict(extra="forbid")


class _TutorialRequest(BaseModel):
    model_config = _STRICT

    @field_validator("*", mode="before")
    @classmethod
    def _encodable_text(cls, value: Any, info: Any) -> Any:
        return reject_lone_surrogates(value, info)  # the same check as the OpenAI requests


Pair = Annotated[list[StrictStr], Field(min_length=2, max_length=2)]


class HistoryMessage(BaseModel):
    model_config = _STRICT

    role: Literal["system", "user", "assistant"]
    content: StrictStr


class GenerateRequest(_TutorialRequest):
    """The distilgpt2 tutorial's request; the generation fields are optional overrides of its fixed values."""

    prompt: StrictStr | None = Field(default=None, description="Text to continue.")
    model: StrictStr | None = Field(default=None, description="Model id; the default model when absent.")
    max_length: StrictInt | None = Field(
        default=None, ge=1, description="Prompt + new tokens, as transformers' max_length (default 200)."
    )
    num_beams: StrictInt | None = Field(default=None, ge=1, le=16, description="Beams (default 5).")
    no_repeat_ngram_size: StrictInt | None = Field(default=None, ge=0, description="Default 2.")
    early_stopping: StrictBool | None = Field(default=None, description="Default true.")
    length_penalty: StrictFloat | None = Field(default=None, description="Default 1.0.")


class GenerateResponse(BaseModel):
    generated_text: str = Field(description="The prompt followed by its continuation (one decode of the whole output).")


class ChatRequest(_TutorialRequest):
    """The self-hosted LLM tutorials' request (Qwen2, OpenELM, DeepSeek-Coder-V2, Phi-4)."""

    prompt: StrictStr | None = Field(default=None, description="The new user message.")
    history: list[Pair] | list[HistoryMessage] | None = Field(
        default=None,
        description='Earlier turns: `[[question, answer], …]` or `[{"role", "content"}, …]`; '
        "send back what the previous answer returned.",
    )
    max_length: StrictInt | None = Field(
        default=None, ge=1, description="New tokens at most (default: the model's cap, else the rest of its window)."
    )
    top_p: StrictFloat | None = Field(default=None, gt=0, le=1)
    top_k: StrictInt | None = Field(default=None, ge=-1)
    temperature: StrictFloat | None = Field(default=None, ge=0, le=2, description="0 = greedy.")
    repetition_penalty: StrictFloat | None = Field(default=None, gt=0, le=10)
    model: StrictStr | None = Field(default=None, description="Model id; the default model when absent.")


class ChatResponse(BaseModel):
    response: str = Field(description="The reply (for a model without a chat template: prompt + continuation).")
    history: list[Any] = Field(description="The history sent, plus this turn, in the same form.")
    status: int = Field(description="Always 200 (the tutorials' field).")
    time: str = Field(description="Server local time, `YYYY-MM-DD HH:MM:SS`.")


class DetailError(BaseModel):
    """FastAPI's error shape, which the tutorials' servers answer with."""

    detail: str = Field(description="What went wrong, e.g. `No prompt provided`.")


GENERATE_EXAMPLES = {
    "tutorial": {
        "summary": "The distilgpt2 tutorial's request",
        "value": {"prompt": "Hello GPT"},
    },
}

CHAT_EXAMPLES = {
    "first-turn": {
        "summary": "First turn (DeepSeek / Qwen2 / OpenELM clients send only the prompt)",
        "value": {"prompt": "你好"},
    },
    "pairs-history": {
        "summary": "DeepSeek-style: history as [question, answer] pairs and sampling fields",
        "value": {
            "prompt": "And in Python?",
            "history": [["How do I reverse a list?", "Use slicing: xs[::-1]."]],
            "max_length": 128,
            "top_p": 0.7,
            "top_k": 5,
            "temperature": 0.95,
            "repetition_penalty": 1.1,
        },
    },
    "messages-history": {
        "summary": "Phi-4-style: history as role/content messages",
        "value": {
            "prompt": "And its population?",
            "history": [
                {"role": "user", "content": "What is the capital of France?"},
                {"role": "assistant", "content": "Paris."},
            ],
        },
    },
}
