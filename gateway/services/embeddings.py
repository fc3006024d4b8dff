"""Embeddings: validate the inputs, tokenize, check lengths, run the model off the event loop, shape vectors.

Everything CPU-heavy (tokenizing, forward passes) runs in the model's own runner thread (a one-thread
WorkerPool per embedding model): the event loop never waits on it, and a model's forward passes never
interleave (a full queue answers 429 + Retry-After).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

from gateway.accounting import count_tokens
from gateway.errors import ContextLengthExceededError, EngineError, InvalidRequestError, LimitExceededError
from gateway.registry import Lease
from gateway.schemas.embeddings import EmbeddingData, EmbeddingRequest, EmbeddingResponse, EmbeddingUsage
from gateway.settings import Settings

ENCODINGS = ("float", "base64")


@dataclass
class EmbeddingInputs:
    """A request's inputs as the model takes them: texts to tokenize, or token ids as sent."""

    texts: list[str] | None
    ids: list[list[int]] | None

    def __len__(self) -> int:
        return len(self.texts if self.texts is not None else self.ids or [])


def parse_inputs(value: object) -> EmbeddingInputs:
    """The four shapes OpenAI accepts: a string, strings, token ids, lists of token ids."""
    if isinstance(value, str):
        return EmbeddingInputs([value], None)
    if not isinstance(value, list) or not value:
        raise InvalidRequestError("input must be a non-empty string or a non-empty list.", param="input")
    if all(isinstance(item, str) for item in value):
        return EmbeddingInputs(list(value), None)
    if all(isinstance(item, int) for item in value):
        return EmbeddingInputs(None, [list(value)])
    return EmbeddingInputs(None, [list(item) for item in value])


class EmbeddingService:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    async def create(self, req: EmbeddingRequest, lease: Lease) -> tuple[bytes, int]:
        """The response body (JSON bytes) and its token count. Tokenizing, the forward passes and the
        JSON encoding of thousands of floats all run in the model's thread, not on the event loop."""
        req.log_ignored_fields()
        served = lease.served
        inputs = self._validate(req, served)
        body, tokens = await served.runner.run(self._respond, served, inputs, req, lease.model_id)
        count_tokens(tokens, 0)
        return body, tokens

    def _validate(self, req: EmbeddingRequest, served) -> EmbeddingInputs:
        """Cheap checks, on the loop, before anything is tokenized."""
        if req.encoding_format not in ENCODINGS:
            raise InvalidRequestError(
                f"encoding_format must be one of {', '.join(ENCODINGS)}.", param="encoding_format"
            )
        if req.dimensions is not None and not 1 <= req.dimensions <= served.dimensions:
            raise InvalidRequestError(
                f"dimensions must be between 1 and {served.dimensions} (this model's size).", param="dimensions"
            )
        limit = req.truncate_prompt_tokens
        if limit is not None and not (limit == -1 or 1 <= limit <= served.max_length):
            raise InvalidRequestError(
                f"truncate_prompt_tokens must be -1 or between 1 and {served.max_length} (the model's maximum).",
                param="truncate_prompt_tokens",
            )
        inputs = parse_inputs(req.input)
        if len(inputs) > served.spec.max_inputs:
            raise LimitExceededError(
                f"{len(inputs)} inputs in one request; this model takes at most {served.spec.max_inputs}.",
                param="input",
            )
        if inputs.texts is not None:
            if any(text == "" for text in inputs.texts):
                raise InvalidRequestError("input must not contain empty strings.", param="input")
            chars = sum(len(text) for text in inputs.texts)
            if chars > self.settings.max_prompt_chars:
                raise LimitExceededError(
                    f"The inputs have {chars} characters; the limit is {self.settings.max_prompt_chars}.",
                    param="input",
                )
        else:
            for ids in inputs.ids or []:
                if not ids or any(not 0 <= t < served.vocab_size for t in ids):
                    raise InvalidRequestError(
                        f"Token inputs must be non-empty lists of ids in [0, {served.vocab_size}).", param="input"
                    )
        return inputs

    @classmethod
    def _respond(cls, served, inputs: EmbeddingInputs, req: EmbeddingRequest, model_id: str) -> tuple[bytes, int]:
        ids = cls._token_ids(served, inputs, req.truncate_prompt_tokens)
        try:
            vectors = served.embed(ids, dimensions=req.dimensions, normalize=served.spec.normalize)
        except RuntimeError as exc:  # torch failed (out of memory, a device error): the same request fails again
            raise EngineError(f"The embedding model failed: {exc}") from exc
        if req.encoding_format == "base64":  # what OpenAI sends: little-endian float32 bytes
            vectors = [base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii") for vector in vectors]
        else:
            vectors = [vector.tolist() for vector in vectors]
        tokens = sum(len(seq) for seq in ids)
        response = EmbeddingResponse(
            data=[EmbeddingData(index=i, embedding=vector) for i, vector in enumerate(vectors)],
            model=model_id,
            usage=EmbeddingUsage(prompt_tokens=tokens, total_tokens=tokens),
        )
        return response.model_dump_json().encode(), tokens

    @staticmethod
    def _token_ids(served, inputs: EmbeddingInputs, truncate: int | None) -> list[list[int]]:
        """The ids the model runs on, each checked against (or cut to) the model's length."""
        limit = served.max_length if truncate in (None, -1) else truncate
        if inputs.texts is not None:
            tokenizer = served.tokenizer
            if truncate is None:
                ids = tokenizer(inputs.texts, add_special_tokens=True)["input_ids"]
            else:  # the tokenizer's own truncation keeps the special tokens ([CLS] ... [SEP])
                ids = tokenizer(inputs.texts, add_special_tokens=True, truncation=True, max_length=limit)["input_ids"]
        else:
            ids = inputs.ids or []
            if truncate is not None:
                keep_end = getattr(served.tokenizer, "truncation_side", "right") == "left"
                ids = [seq[-limit:] if keep_end else seq[:limit] for seq in ids]
        for index, seq in enumerate(ids):
            if len(seq) > served.max_length:
                raise ContextLengthExceededError(
                    f"input[{index}] has {len(seq)} tokens; this model takes at most {served.max_length}. "
                    "Shorten it, or set truncate_prompt_tokens to cut it.",
                    param="input",
                )
        return ids
