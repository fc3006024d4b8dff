"""Legacy text completions: prompt lists, echo, legacy logprobs, n per prompt (index = prompt*n + j)."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

from gateway.accounting import count_tokens
from gateway.engine.admission import reserve
from gateway.errors import InvalidRequestError, UnsupportedParameterError
from gateway.models import ServedModel
from gateway.registry import COMPLETION, Lease, ModelRegistry
from gateway.schemas.common import Usage
from gateway.schemas.completions import Completion, CompletionChoice, CompletionLogprobs, CompletionRequest
from gateway.services.limits import check_capacity, check_completion_limits, prompt_count
from gateway.services.logprobs import extend_completion_logprobs
from gateway.services.params import SamplingFields, budget, check_text_fits, resolve_token_fields, sampling_params
from gateway.services.sequences import Piece, merge, run_sequence
from gateway.services.stops import normalize_stop
from gateway.services.workers import WorkerPool
from gateway.settings import Settings


@dataclass
class PromptInput:
    text: str
    ids: list[int]
    max_new_tokens: int


@dataclass
class CompletionPlan:
    id: str
    created: int
    model_id: str
    served: ServedModel
    request: CompletionRequest
    prompts: list[PromptInput]
    stops: list[str]

    @property
    def n(self) -> int:
        return self.request.n or 1

    def sequences(self) -> list[AsyncIterator[Piece]]:
        req = self.request
        fields = SamplingFields(**{name: getattr(req, name) for name in SamplingFields.__dataclass_fields__})
        prompt_logprobs = req.logprobs if (req.echo and req.logprobs is not None) else None
        return [
            run_sequence(
                self.served.engine,
                prompt.ids,
                sampling_params(
                    fields,
                    self.served,
                    max_new_tokens=prompt.max_new_tokens,
                    logprobs=req.logprobs,
                    prompt_logprobs=prompt_logprobs,
                    seed_offset=j,
                ),
                self.stops,
            )
            for prompt in self.prompts
            for j in range(self.n)
        ]


class _ChoiceState:
    """Accumulates one choice: echoed prompt, text, legacy logprobs with running text offsets."""

    def __init__(self, plan: CompletionPlan, index: int) -> None:
        self.prompt = plan.prompts[index // plan.n]
        self.echo = bool(plan.request.echo)
        self.logprobs = CompletionLogprobs() if plan.request.logprobs is not None else None
        self.offset = len(self.prompt.text) if self.echo else 0
        self.tokens = 0
        self.finish: str | None = None

    def add(self, piece: Piece) -> tuple[str, CompletionLogprobs | None]:
        """Record a piece; returns the text and logprobs it contributes."""
        self.tokens = piece.completion_tokens
        self.finish = piece.finish_reason or self.finish
        if self.logprobs is None:
            return piece.text, None
        delta = CompletionLogprobs()
        if piece.prompt_logprobs:
            extend_completion_logprobs(delta, piece.prompt_logprobs, 0)
        if piece.logprobs:
            self.offset = extend_completion_logprobs(delta, piece.logprobs, self.offset)
        for name in ("tokens", "token_logprobs", "top_logprobs", "text_offset"):
            getattr(self.logprobs, name).extend(getattr(delta, name))
        return piece.text, delta


class CompletionService:
    def __init__(self, registry: ModelRegistry, settings: Settings, workers: WorkerPool | None = None) -> None:
        self.registry = registry
        self.settings = settings
        self.workers = workers or WorkerPool(settings.prepare_threads, settings.prepare_queue)

    async def prepare_off_loop(self, req: CompletionRequest, lease: Lease | None = None) -> CompletionPlan:
        """`prepare` in the worker pool: tokenizing large prompts never blocks the event loop."""
        return await self.workers.run(self.prepare, req, lease)

    def prepare(self, req: CompletionRequest, lease: Lease | None = None) -> CompletionPlan:
        """Validate and render the request (CPU-heavy on large inputs: call it through prepare_off_loop).
        `lease`: the model the route acquired for this request; without one, a ready model only."""
        req.log_ignored_fields()
        model_id, served = (lease.model_id, lease.served) if lease else self.registry.get(req.model, COMPLETION)
        if req.suffix:
            raise UnsupportedParameterError(
                "suffix is not supported: this model has no fill-in-the-middle template.", param="suffix"
            )
        if req.best_of is not None and req.best_of != (req.n or 1):
            raise UnsupportedParameterError("best_of different from n is not supported.", param="best_of")
        # Cheap checks first: every bound before a prompt is tokenized.
        check_completion_limits(req, served, self.settings)
        count = prompt_count(req.prompt)
        check_capacity(served, count * (req.n or 1), param="prompt" if (req.n or 1) == 1 else "n")
        resolve_token_fields(SamplingFields.of(req), served)
        stops = normalize_stop(req.stop, self.settings.max_stop_sequences)
        prompts = []
        for text, ids in self._prompts(req, served):
            max_new = budget(len(ids), req.max_tokens, served, noun="prompt")
            prompts.append(PromptInput(text=text, ids=ids, max_new_tokens=max_new))
        reserve(served.engine, len(prompts) * (req.n or 1))  # admission control: 429 before any stream starts
        return CompletionPlan(
            id=f"cmpl-{uuid.uuid4().hex}",
            created=int(time.time()),
            model_id=model_id,
            served=served,
            request=req,
            prompts=prompts,
            stops=stops,
        )

    @staticmethod
    def _prompts(req: CompletionRequest, served: ServedModel) -> list[tuple[str, list[int]]]:
        prompt = req.prompt
        if isinstance(prompt, str):
            items: list = [prompt]
        elif prompt and all(isinstance(p, int) for p in prompt):
            items = [prompt]
        else:
            items = list(prompt)
        if not items:
            raise InvalidRequestError("prompt must not be empty.", param="prompt")
        out = []
        for item in items:
            if isinstance(item, str):
                check_text_fits(len(item), served, noun="prompt")  # before tokenizing it
                ids = served.pipeline.encode_prompt(item)
                text = item
            else:
                if not item or any(not 0 <= t < served.vocab_size for t in item):
                    raise InvalidRequestError(
                        f"Token prompts must be non-empty lists of ids in [0, {served.vocab_size}).", param="prompt"
                    )
                ids, text = list(item), served.pipeline.decode(item, skip_special_tokens=False)
            if not ids:
                raise InvalidRequestError("prompt must contain at least one token.", param="prompt")
            out.append((text, ids))
        return out

    async def complete(self, plan: CompletionPlan) -> Completion:
        states = [_ChoiceState(plan, i) for i in range(len(plan.prompts) * plan.n)]
        texts = [s.prompt.text if s.echo else "" for s in states]
        async for index, piece in merge(plan.sequences()):
            text, _ = states[index].add(piece)
            texts[index] += text
        choices = [
            CompletionChoice(index=i, text=texts[i], logprobs=s.logprobs, finish_reason=s.finish or "stop")
            for i, s in enumerate(states)
        ]
        usage = self._usage(plan, states)
        count_tokens(usage.prompt_tokens, usage.completion_tokens)
        return Completion(id=plan.id, created=plan.created, model=plan.model_id, choices=choices, usage=usage)

    async def stream(self, plan: CompletionPlan) -> AsyncIterator[str]:
        states = [_ChoiceState(plan, i) for i in range(len(plan.prompts) * plan.n)]

        def chunk(choices: list[CompletionChoice], usage: Usage | None = None) -> str:
            return Completion(
                id=plan.id, created=plan.created, model=plan.model_id, choices=choices, usage=usage
            ).to_chunk_json()

        echoed = [False] * len(states)
        for i, state in enumerate(states):
            if state.echo and state.logprobs is None:
                echoed[i] = True
                yield chunk([CompletionChoice(index=i, text=state.prompt.text)])
        try:
            async for index, piece in merge(plan.sequences()):
                text, logprobs = states[index].add(piece)
                if states[index].echo and not echoed[index]:  # echo with logprobs: prompt text with its logprobs
                    echoed[index] = True
                    text = states[index].prompt.text + text
                if text or (logprobs and logprobs.tokens):
                    yield chunk([CompletionChoice(index=index, text=text, logprobs=logprobs)])
                if piece.finish_reason:
                    yield chunk([CompletionChoice(index=index, text="", finish_reason=piece.finish_reason)])
        finally:  # a stream cut short still used what it generated
            usage = self._usage(plan, states)
            count_tokens(usage.prompt_tokens, usage.completion_tokens)
        options = plan.request.stream_options
        if options is not None and options.include_usage:
            yield chunk([], self._usage(plan, states))

    @staticmethod
    def _usage(plan: CompletionPlan, states: list[_ChoiceState]) -> Usage:
        return Usage.of(sum(len(p.ids) for p in plan.prompts), sum(s.tokens for s in states))
