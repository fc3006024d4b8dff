"""vLLM's POST /tokenize and POST /detokenize, on the same prompt path as chat and completions.

The rule: a `messages` body is rendered by the very function chat uses (`render_prompt`: tools, the
response_format hint, the chat template, BOS handling), so `count` equals the `usage.prompt_tokens` that
/v1/chat/completions reports for the same body; a `prompt` is tokenized as /v1/completions tokenizes it
(or, on an embedding model, as /v1/embeddings does). Runs in the prepare worker pool: a long prompt never
holds up the event loop.
"""

from __future__ import annotations

from typing import Any

from gateway.errors import InvalidRequestError, LimitExceededError
from gateway.models import ServedModel
from gateway.registry import Lease
from gateway.schemas.tokenize import DetokenizeRequest, DetokenizeResponse, TokenizeRequest, TokenizeResponse
from gateway.services.chat import render_prompt
from gateway.services.limits import check_chat_limits
from gateway.services.workers import WorkerPool
from gateway.settings import Settings


def _tokenizer(served: Any) -> Any:
    return served.pipeline.tokenizer if isinstance(served, ServedModel) else served.tokenizer


class TokenizeService:
    def __init__(self, settings: Settings, workers: WorkerPool) -> None:
        self.settings = settings
        self.workers = workers

    async def tokenize(self, req: TokenizeRequest, lease: Lease) -> TokenizeResponse:
        return await self.workers.run(self._tokenize, req, lease.served)

    async def detokenize(self, req: DetokenizeRequest, lease: Lease) -> DetokenizeResponse:
        return await self.workers.run(self._detokenize, req, lease.served)

    def _tokenize(self, req: TokenizeRequest, served: Any) -> TokenizeResponse:
        req.log_ignored_fields()
        if (req.prompt is None) == (req.messages is None):
            raise InvalidRequestError("Send either `prompt` or `messages` (not both).", param="prompt")
        if req.messages is not None:
            ids = self._chat_ids(req, served)
        else:
            ids = self._prompt_ids(req.prompt or "", served, req.add_special_tokens is not False)
        strs = _tokenizer(served).convert_ids_to_tokens(ids) if req.return_token_strs else None
        return TokenizeResponse(count=len(ids), max_model_len=served.context_length, tokens=ids, token_strs=strs)

    def _chat_ids(self, req: TokenizeRequest, served: Any) -> list[int]:
        if not isinstance(served, ServedModel) or not served.pipeline.supports_chat:
            raise InvalidRequestError(
                "This model has no chat template, so `messages` cannot be rendered; send `prompt` instead.",
                param="messages",
            )
        if not req.messages:
            raise InvalidRequestError("messages must not be empty.", param="messages")
        check_chat_limits(req, self.settings)
        _, ids = render_prompt(req, served, add_generation_prompt=req.add_generation_prompt)
        return ids

    def _prompt_ids(self, text: str, served: Any, special: bool) -> list[int]:
        if len(text) > self.settings.max_prompt_chars:
            raise LimitExceededError(
                f"The prompt has {len(text)} characters, which exceeds the limit of {self.settings.max_prompt_chars}.",
                param="prompt",
            )
        if isinstance(served, ServedModel):
            if special:  # as /v1/completions tokenizes a prompt (BOS where the tokenizer adds one)
                return served.pipeline.encode_prompt(text)
            return served.pipeline.tokenizer.encode(text, add_special_tokens=False)
        return list(served.tokenizer(text, add_special_tokens=special)["input_ids"])  # as /v1/embeddings does

    @staticmethod
    def _detokenize(req: DetokenizeRequest, served: Any) -> DetokenizeResponse:
        req.log_ignored_fields()
        vocab = served.vocab_size
        if any(not 0 <= t < vocab for t in req.tokens):
            raise InvalidRequestError(f"tokens must be ids in [0, {vocab}).", param="tokens")
        text = _tokenizer(served).decode(list(req.tokens), skip_special_tokens=False)
        return DetokenizeResponse(prompt=text)
