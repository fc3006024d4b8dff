"""Chat completions: validate, render the prompt, run n sequences, shape JSON or stream chunks.

Output shaping (content / reasoning / tool calls) goes through one ChoiceDecoder per choice for both
streaming and non-streaming responses, so the two always agree.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

from gateway.accounting import count_tokens
from gateway.engine.admission import reserve
from gateway.errors import InvalidRequestError
from gateway.models import ServedModel
from gateway.registry import CHAT, Lease, ModelRegistry
from gateway.schemas.chat import (
    AssistantMessage,
    ChatChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChoiceLogprobs,
    ChunkChoice,
    DeltaFunction,
    DeltaMessage,
    DeltaToolCall,
    FunctionOut,
    ToolCallOut,
)
from gateway.schemas.common import Usage
from gateway.services.chat_output import ChoiceDecoder, Event
from gateway.services.limits import check_capacity, check_chat_limits
from gateway.services.logprobs import chat_logprobs
from gateway.services.messages import to_template_messages
from gateway.services.output_mode import OutputMode, PromptPlan, compile_mode, plan_prompt
from gateway.services.params import SamplingFields, budget, check_text_fits, resolve_token_fields, sampling_params
from gateway.services.sequences import Piece, merge, run_sequence
from gateway.services.stops import normalize_stop
from gateway.services.workers import WorkerPool
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
    mode: OutputMode
    explicit_budget: bool = False
    starts_in_reasoning: bool = False

    @property
    def n(self) -> int:
        return self.request.n or 1

    def decoder(self) -> ChoiceDecoder:
        return ChoiceDecoder(self.mode, starts_in_reasoning=self.starts_in_reasoning)

    def sequences(self) -> list[AsyncIterator[Piece]]:
        req = self.request
        fields = SamplingFields(**{name: getattr(req, name) for name in SamplingFields.__dataclass_fields__})
        keep_special = self.mode.tool_format is not None and self.mode.tool_format.needs_special_tokens
        return [
            run_sequence(
                self.served.engine,
                self.prompt_ids,
                sampling_params(
                    fields,
                    self.served,
                    max_new_tokens=self.max_new_tokens,
                    logprobs=self.top_logprobs,
                    seed_offset=i,
                    logits_processors=self.mode.processors(self.served, self.max_new_tokens, self.explicit_budget),
                    keep_special_tokens=keep_special,
                    constrained=self.mode.grammar is not None,
                ),
                self.stops,
            )
            for i in range(self.n)
        ]


class ChatService:
    def __init__(self, registry: ModelRegistry, settings: Settings, workers: WorkerPool | None = None) -> None:
        self.registry = registry
        self.settings = settings
        self.workers = workers or WorkerPool(settings.prepare_threads, settings.prepare_queue)

    async def prepare_off_loop(self, req: ChatCompletionRequest, lease: Lease | None = None) -> ChatPlan:
        """`prepare` in the worker pool: rendering, tokenizing and compiling never block the event loop."""
        return await self.workers.run(self.prepare, req, lease)

    def prepare(self, req: ChatCompletionRequest, lease: Lease | None = None) -> ChatPlan:
        """Validate and render the request (CPU-heavy on large inputs: call it through prepare_off_loop).
        `lease`: the model the route acquired for this request; without one, a ready model only."""
        req.log_ignored_fields()
        model_id, served = (lease.model_id, lease.served) if lease else self.registry.get(req.model, CHAT)
        # Cheap checks first: every bound before the template renders or a grammar compiles.
        check_chat_limits(req, self.settings)
        check_capacity(served, req.n or 1, param="n")
        resolve_token_fields(SamplingFields.of(req), served)
        if req.top_logprobs and not req.logprobs:
            raise InvalidRequestError("top_logprobs requires logprobs to be true.", param="top_logprobs")
        stops = normalize_stop(req.stop, self.settings.max_stop_sequences)
        # Text-only turn markers of the family (not tokens, so no stop id can catch them).
        stops += [s for s in served.pipeline.stop_strings if s not in stops]
        prompt, prompt_ids = render_prompt(req, served)
        requested = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
        max_new_tokens = budget(len(prompt_ids), requested, served, noun="messages")
        mode = compile_mode(prompt, served, self.settings.grammar_compile_seconds)  # after the context check
        starts_in_reasoning = mode.reasoning and served.pipeline.decode(
            prompt_ids[-8:], skip_special_tokens=False
        ).rstrip().endswith("<think>")
        reserve(served.engine, req.n or 1)  # admission control: 429 + Retry-After before any stream starts
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
            mode=mode,
            explicit_budget=requested is not None,
            starts_in_reasoning=starts_in_reasoning,
        )

    async def complete(self, plan: ChatPlan) -> ChatCompletion:
        decoders = [plan.decoder() for _ in range(plan.n)]
        events: list[list[Event]] = [d.start() for d in decoders]
        logprobs: list[list] = [[] for _ in range(plan.n)]
        finish: list[str] = ["stop"] * plan.n
        tokens = [0] * plan.n
        async for index, piece in merge(plan.sequences()):
            events[index] += decoders[index].feed(piece.text)
            logprobs[index] += piece.logprobs or []
            tokens[index] = piece.completion_tokens
            if piece.finish_reason:
                tail, finish[index] = decoders[index].finish(piece.finish_reason)
                events[index] += tail
        choices = [
            ChatChoice(
                index=i,
                message=_message(events[i]),
                logprobs=self._logprobs(plan, logprobs[i]),
                finish_reason=finish[i],
            )
            for i in range(plan.n)
        ]
        count_tokens(len(plan.prompt_ids), sum(tokens))
        return ChatCompletion(
            id=plan.id,
            created=plan.created,
            model=plan.model_id,
            choices=choices,
            usage=Usage.of(len(plan.prompt_ids), sum(tokens)),
        )

    async def stream(self, plan: ChatPlan) -> AsyncIterator[str]:
        """Chunk JSON strings: roles for every choice first, then deltas, a `{}` finish, then usage."""

        def chunk(choices: list[ChunkChoice], usage: Usage | None = None) -> str:
            return ChatCompletionChunk(
                id=plan.id, created=plan.created, model=plan.model_id, choices=choices, usage=usage
            ).to_json()

        def deltas(index: int, events: list[Event]) -> list[str]:
            return [chunk([ChunkChoice(index=index, delta=_delta(event))]) for event in events]

        decoders = [plan.decoder() for _ in range(plan.n)]
        yield chunk([ChunkChoice(index=i, delta=DeltaMessage(role="assistant", content="")) for i in range(plan.n)])
        for i, decoder in enumerate(decoders):
            for data in deltas(i, decoder.start()):
                yield data
        tokens = [0] * plan.n
        try:
            async for index, piece in merge(plan.sequences()):
                tokens[index] = piece.completion_tokens
                events = decoders[index].feed(piece.text)
                if piece.logprobs:  # logprobs ride on the first chunk of this piece (or an empty delta)
                    first = _delta(events.pop(0)) if events else DeltaMessage(content="")
                    logprobs = self._logprobs(plan, piece.logprobs)
                    yield chunk([ChunkChoice(index=index, delta=first, logprobs=logprobs)])
                for data in deltas(index, events):
                    yield data
                if piece.finish_reason:
                    tail, finish = decoders[index].finish(piece.finish_reason)
                    for data in deltas(index, tail):
                        yield data
                    yield chunk([ChunkChoice(index=index, delta=DeltaMessage(), finish_reason=finish)])
        finally:  # a stream cut short still used what it generated
            count_tokens(len(plan.prompt_ids), sum(tokens))
        options = plan.request.stream_options
        if options is not None and options.include_usage:
            yield chunk([], Usage.of(len(plan.prompt_ids), sum(tokens)))

    @staticmethod
    def _logprobs(plan: ChatPlan, items: list) -> ChoiceLogprobs | None:
        if plan.top_logprobs is None:
            return None
        return ChoiceLogprobs(content=chat_logprobs(items, plan.top_logprobs))


def render_prompt(
    req: ChatCompletionRequest, served: ServedModel, *, add_generation_prompt: bool = True
) -> tuple[PromptPlan, list[int]]:
    """The prompt a chat request runs on: tools, the response_format hint and the template applied, then
    tokenized. One function for chat and POST /tokenize, so /tokenize counts what chat's usage reports."""
    prompt = plan_prompt(req, served, to_template_messages(req.messages))
    try:
        text = served.pipeline.render_chat(
            prompt.messages,
            tools=prompt.tools,
            template_kwargs=req.chat_template_kwargs,
            add_generation_prompt=add_generation_prompt,
        )
    except (TypeError, ValueError) as exc:  # a template choking on an odd message shape
        raise InvalidRequestError(f"Could not render the messages with the chat template: {exc}") from exc
    check_text_fits(len(text), served, noun="messages")  # before tokenizing it
    return prompt, served.pipeline.encode_rendered(text)


def _delta(event: Event) -> DeltaMessage:
    if event.kind == "content":
        return DeltaMessage(content=event.text)
    if event.kind == "reasoning":
        return DeltaMessage(reasoning_content=event.text, reasoning=event.text)
    if event.kind == "tool_start":
        function = DeltaFunction(name=event.name, arguments="")
        return DeltaMessage(
            tool_calls=[DeltaToolCall(index=event.index, id=event.call_id, type="function", function=function)]
        )
    return DeltaMessage(tool_calls=[DeltaToolCall(index=event.index, function=DeltaFunction(arguments=event.text))])


def _message(events: list[Event]) -> AssistantMessage:
    content = "".join(e.text for e in events if e.kind == "content")
    reasoning = "".join(e.text for e in events if e.kind == "reasoning") or None
    calls: dict[int, ToolCallOut] = {}
    for event in events:
        if event.kind == "tool_start":
            calls[event.index] = ToolCallOut(id=event.call_id, function=FunctionOut(name=event.name, arguments=""))
        elif event.kind == "tool_args":
            calls[event.index].function.arguments += event.text
    return AssistantMessage(
        content=None if calls and not content else content,
        tool_calls=[calls[i] for i in sorted(calls)] or None,
        reasoning_content=reasoning,
        reasoning=reasoning,
    )
