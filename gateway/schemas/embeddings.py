"""Wire schemas for POST /v1/embeddings (OpenAI's CreateEmbeddingRequest/Response; requests lenient)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from gateway.schemas.common import Int, OpenAIRequest, OptionalInt

EmbeddingInput = str | list[str] | list[Int] | list[list[Int]]


class EmbeddingRequest(OpenAIRequest):
    model: str | None = None
    input: EmbeddingInput = Field(
        description="A string, a list of strings, a list of token ids, or a list of token-id lists (ids of the "
        "model's own tokenizer, fed as they are: include the special tokens, as POST /tokenize returns them)."
    )
    encoding_format: str = Field(default="float", description="`float` or `base64` (little-endian float32).")
    dimensions: OptionalInt = Field(
        default=None, description="Keep the first N dimensions and re-normalize (Matryoshka-style truncation)."
    )
    truncate_prompt_tokens: OptionalInt = Field(
        default=None,
        description="vLLM's extra: cut each input to this many tokens (-1 = the model's maximum) instead of "
        "refusing inputs longer than the model takes.",
    )
    user: str | None = None


class EmbeddingData(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str  # a base64 string with encoding_format=base64


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingData]
    model: str
    usage: EmbeddingUsage
