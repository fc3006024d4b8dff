"""Chat completions: validate, render the prompt, run n sequences, shape JSON or stream chunks."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

from gateway.errors import InvalidRequestError
from gateway.models import ServedModel
from gateway.registry import ModelRegistry
from gateway.schemas.chat import (
    AssistantMessage,
    ChatChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChoiceLogprobs,
    ChunkChoice,
    DeltaMessage,
)
from gateway.schemas.common import Usage
from gateway.services.logprobs import chat_logprobs
from gateway.services.messages import to_template_messages
from gateway.services.params import SamplingFields, budget, sampling_params
from gateway.services.sequences import Piece, merge, run_sequence
from gateway.services.stops import normalize_stop
from gateway.settings import Settings


@dataclass
class ChatPlan:
    """A validated request, ready to run: everything that can fail with a 4xx has been checked."""

    id: str
    created: int
    model_id: str
    served: ServedModel
    prompt_ids: list[int]
    request: ChatCompletionRequest
    stops: list[str]
    top_logprobs: int | None
    max_new_tokens: int

    def sequences(self) -> list[AsyncIterator[Piece]]:
        req = self.request
        fields = SamplingFields(**{name: getattr(req, name) for name in SamplingFields.__dataclass_fields__})
        return [
            run_sequence(
                self.served.engine,
                self.prompt_ids,
                sampling_params(
                    fields, self.served, max_new_tokens=self.max_new_tokens, logprobs=self.top_logprobs, seed_offset=i
                ),
                self.stops,
            )
            for i in range(req.n or 1)
        ]


class ChatService:
    def __init__(self, registry: ModelRegistry, settings: Settings) -> None:
        self.registry = registry
        self.settings = settings

    def prepare(self, req: ChatCompletionRequest) -> ChatPlan:
        req.log_ignored_fields()
        model_id, served = self.registry.get(req.model)
        if req.top_logprobs and not req.logprobs:
            raise InvalidRequestError("top_logprobs requires logprobs to be true.", param="top_logprobs")
        stops = normalize_stop(req.stop, self.settings.max_stop_sequences)
        # Text-only turn markers of the family (not tokens, so no stop id can catch them).
        stops += [s for s in served.pipeline.stop_strings if s not in stops]
        try:
            prompt_ids = served.pipeline.encode_chat(
                to_template_messages(req.messages), tools=req.tools, template_kwargs=req.chat_template_kwargs
            )
        except (TypeError, ValueError) as exc:  # a template choking on an odd message shape
            raise InvalidRequestError(f"Could not render the messages with the chat template: {exc}") from exc
        requested = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
        max_new_tokens = budget(
            len(prompt_ids), requested, served, default_cap=self.settings.default_max_tokens, noun="messages"
        )
        return ChatPlan(
            id=f"chatcmpl-{uuid.uuid4().hex}",
            created=int(time.time()),
            model_id=model_id,
            served=served,
            prompt_ids=prompt_ids,
            request=req,
            stops=stops,
            top_logprobs=(req.top_logprobs or 0) if req.logprobs else None,
            max_new_tokens=max_new_tokens,
        )

    async def complete(self, plan: ChatPlan) -> ChatCompletion:
        n = plan.request.n or 1
        texts = [""] * n
        logprobs: list[list] = [[] for _ in range(n)]
        finish: list[str | None] = [None] * n
        tokens = [0] * n
        async for index, piece in merge(plan.sequences()):
            texts[index] += piece.text
            if piece.logprobs:
                logprobs[index].extend(piece.logprobs)
            tokens[index] = piece.completion_tokens
            finish[index] = piece.finish_reason or finish[index]
        choices = [
            ChatChoice(
                index=i,
                message=AssistantMessage(content=texts[i]),
                logprobs=self._logprobs(plan, logprobs[i]),
                finish_reason=finish[i] or "stop",
            )
            for i in range(n)
        ]
        return ChatCompletion(
            id=plan.id,
            created=plan.created,
            model=plan.model_id,
            choices=choices,
            usage=Usage.of(len(plan.prompt_ids), sum(tokens)),
        )

    async def stream(self, plan: ChatPlan) -> AsyncIterator[str]:
        """Chunk JSON strings: roles for every choice first, then content, a `{}` finish, then usage."""
        n = plan.request.n or 1

        def chunk(choices: list[ChunkChoice], usage: Usage | None = None) -> str:
            return ChatCompletionChunk(
                id=plan.id, created=plan.created, model=plan.model_id, choices=choices, usage=usage
            ).to_json()

        yield chunk([ChunkChoice(index=i, delta=DeltaMessage(role="assistant", content="")) for i in range(n)])
        tokens = [0] * n
        async for index, piece in merge(plan.sequences()):
            tokens[index] = piece.completion_tokens
            if piece.text or piece.logprobs:
                logprobs = self._logprobs(plan, piece.logprobs or [])
                yield chunk([ChunkChoice(index=index, delta=DeltaMessage(content=piece.text), logprobs=logprobs)])
            if piece.finish_reason:
                yield chunk([ChunkChoice(index=index, delta=DeltaMessage(), finish_reason=piece.finish_reason)])
        options = plan.request.stream_options
        if options is not None and options.include_usage:
            yield chunk([], Usage.of(len(plan.prompt_ids), sum(tokens)))

    @staticmethod
    def _logprobs(plan: ChatPlan, items: list) -> ChoiceLogprobs | None:
        if plan.top_logprobs is None:
            return None
        return ChoiceLogprobs(content=chat_logprobs(items, plan.top_logprobs))
