"""Wire schemas for vLLM's POST /tokenize and POST /detokenize."""

from __future__ import annotations

from pydantic import BaseModel, Field

from gateway.schemas.chat import ChatCompletionRequest, ChatMessage
from gateway.schemas.common import Bool, Int, OpenAIRequest


class TokenizeRequest(ChatCompletionRequest):
    """Either `prompt` (tokenized as /v1/completions tokenizes it) or `messages` plus any field of a chat
    request that shapes the prompt (`tools`, `tool_choice`, `response_format`, `chat_template_kwargs`),
    rendered exactly as /v1/chat/completions renders it."""

    messages: list[ChatMessage] | None = None  # type: ignore[assignment]  # optional here: `prompt` instead
    prompt: str | None = None
    add_generation_prompt: Bool = Field(default=True, description="Append the assistant turn's opening.")
    add_special_tokens: Bool | None = Field(
        default=None,
        description="For `prompt`: add the tokenizer's special tokens (BOS, [CLS]/[SEP]); default true.",
    )
    return_token_strs: Bool | None = Field(default=False, description="Also return each token as text.")


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None = None


class DetokenizeRequest(OpenAIRequest):
    model: str | None = None
    tokens: list[Int]


class DetokenizeResponse(BaseModel):
    prompt: str
