"""The tutorials' APIs (POST /generate, POST /) mapped onto the same prompt pipeline, sampling and engines as
/v1/chat/completions and /v1/completions: chat template, stop ids and stop strings, model defaults, admission
control and token accounting all come from there.

Defaults of POST / (a documented rule, since the tutorials disagree — DeepSeek samples with top_k 5, top_p
0.7, temperature 0.95, repetition_penalty 1.1 and 1024 new tokens; Phi-4 is greedy with 512): every field
the request sends wins; an unset one falls back to the model's own defaults exactly as on chat completions
(the models file's `sampling`, then the model's generation_config, then OpenAI's), and max_length unset
means the model's default cap, else the rest of its window. A max_length beyond the window is cut to what
fits (transformers' generate, which the tutorials call, does not refuse it either).
"""

from __future__ import annotations

import datetime
import uuid
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

from gateway.accounting import count_tokens, mark_first_token
from gateway.engine.admission import reserve
from gateway.engine.types import GenerationRequest, SamplingParams
from gateway.errors import ContextLengthExceededError, InvalidRequestError, LimitExceededError
from gateway.models import ServedModel
from gateway.registry import Lease, ModelRegistry
from gateway.schemas.compat import ChatRequest, ChatResponse, GenerateRequest, GenerateResponse
from gateway.services.params import SamplingFields, budget, check_text_fits, sampling_params
from gateway.services.sequences import merge, run_sequence
from gateway.services.workers import WorkerPool
from gateway.settings import Settings

NO_PROMPT = "No prompt provided"  # the distilgpt2 tutorial's message, word for word
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
# The distilgpt2 tutorial's model.generate(...) arguments.
TUTORIAL_BEAMS = {"max_length": 200, "num_beams": 5, "no_repeat_ngram_size": 2, "early_stopping": True}


class NoPromptError(InvalidRequestError):
    def __init__(self) -> None:
        super().__init__(NO_PROMPT, param="prompt")


@dataclass
class GeneratePlan:
    served: ServedModel
    prompt_ids: list[int]
    params: SamplingParams


@dataclass
class ChatPlan:
    served: ServedModel
    prompt_ids: list[int]
    params: SamplingParams
    stops: list[str]
    request: ChatRequest
    echo: str = ""  # a template-less model answers with the prompt + its continuation
    history: list[Any] = field(default_factory=list)  # what the response returns before this turn


class CompatService:
    def __init__(self, registry: ModelRegistry, settings: Settings, workers: WorkerPool) -> None:
        self.registry = registry
        self.settings = settings
        self.workers = workers

    # ---- POST /generate -------------------------------------------------------------------------------
    async def prepare_generate(self, req: GenerateRequest, lease: Lease) -> GeneratePlan:
        return await self.workers.run(self._prepare_generate, req, lease.served)

    def _prepare_generate(self, req: GenerateRequest, served: ServedModel) -> GeneratePlan:
        prompt = _prompt(req.prompt)
        self._check_chars(len(prompt))
        check_text_fits(len(prompt), served, noun="prompt")
        ids = served.pipeline.encode_prompt(prompt)  # tokenizer.encode(prompt), as the tutorial does
        if not ids:
            raise NoPromptError()
        _check_window(len(ids), served)
        max_length = req.max_length if req.max_length is not None else TUTORIAL_BEAMS["max_length"]
        max_new = max(0, min(max_length - len(ids), served.context_length - len(ids)))
        num_beams = req.num_beams if req.num_beams is not None else TUTORIAL_BEAMS["num_beams"]
        params = SamplingParams(
            max_new_tokens=max_new,
            temperature=0.0,  # the tutorial's generate() does not sample: beams (or greedy with num_beams 1)
            stop_token_ids=served.pipeline.stop_token_ids,
            num_beams=num_beams,
            no_repeat_ngram_size=_pick(req.no_repeat_ngram_size, TUTORIAL_BEAMS["no_repeat_ngram_size"]),
            early_stopping=_pick(req.early_stopping, TUTORIAL_BEAMS["early_stopping"]),
            length_penalty=_pick(req.length_penalty, 1.0),
        )
        reserve(served.engine, 1)  # admission control: 429 before the work starts
        return GeneratePlan(served=served, prompt_ids=ids, params=params)

    async def generate(self, plan: GeneratePlan) -> GenerateResponse:
        request = GenerationRequest(request_id=uuid.uuid4().hex, prompt_ids=plan.prompt_ids, params=plan.params)
        new: list[int] = []
        try:
            async with aclosing(plan.served.engine.generate(request)) as deltas:
                async for delta in deltas:
                    if delta.token_ids:
                        mark_first_token()
                    new += delta.token_ids
        finally:
            count_tokens(len(plan.prompt_ids), len(new))
        # One decode of prompt + continuation: the tutorial's tokenizer.decode(outputs[0], skip_special_tokens=True)
        text = plan.served.pipeline.decode(plan.prompt_ids + new, skip_special_tokens=True)
        return GenerateResponse(generated_text=text)

    # ---- POST / ---------------------------------------------------------------------------------------
    async def prepare_chat(self, req: ChatRequest, lease: Lease) -> ChatPlan:
        return await self.workers.run(self._prepare_chat, req, lease.served)

    def _prepare_chat(self, req: ChatRequest, served: ServedModel) -> ChatPlan:
        prompt = _prompt(req.prompt)
        turns = _turns(req.history or [])
        self._check_chars(len(prompt) + sum(len(t["content"]) for t in turns))
        pipeline = served.pipeline
        echo = ""
        if pipeline.supports_chat:
            try:
                text = pipeline.render_chat([*turns, {"role": "user", "content": prompt}])
            except (TypeError, ValueError) as exc:  # a template refusing e.g. two user turns in a row
                raise InvalidRequestError(f"Could not render the history with the chat template: {exc}") from exc
            check_text_fits(len(text), served, noun="prompt")
            ids = pipeline.encode_rendered(text)
        else:  # a base model (OpenELM's tutorial): plain completion of the earlier turns and the prompt
            text = "\n".join([*(t["content"] for t in turns), prompt])
            check_text_fits(len(text), served, noun="prompt")
            ids = pipeline.encode_prompt(text)
            echo = prompt
        _check_window(len(ids), served)
        if req.max_length is None:
            max_new = budget(len(ids), None, served, noun="prompt")
        else:
            max_new = min(req.max_length, served.context_length - len(ids))
        fields = SamplingFields(
            temperature=req.temperature,
            top_p=req.top_p,
            top_k=req.top_k,
            repetition_penalty=req.repetition_penalty,
        )
        params = sampling_params(fields, served, max_new_tokens=max_new)
        reserve(served.engine, 1)
        return ChatPlan(
            served=served,
            prompt_ids=ids,
            params=params,
            stops=list(pipeline.stop_strings),
            request=req,
            echo=echo,
            history=[t.model_dump() if hasattr(t, "model_dump") else list(t) for t in req.history or []],
        )

    async def chat(self, plan: ChatPlan) -> ChatResponse:
        text, tokens = "", 0
        try:
            async for _, piece in merge([run_sequence(plan.served.engine, plan.prompt_ids, plan.params, plan.stops)]):
                text += piece.text
                tokens = piece.completion_tokens
        finally:
            count_tokens(len(plan.prompt_ids), tokens)
        response = plan.echo + text
        prompt = plan.request.prompt or ""
        if _message_form(plan.request.history):
            turn: list[Any] = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
        else:
            turn = [[prompt, response]]
        return ChatResponse(
            response=response,
            history=[*plan.history, *turn],
            status=200,
            time=datetime.datetime.now().strftime(TIME_FORMAT),
        )

    def _check_chars(self, total: int) -> None:
        if total > self.settings.max_prompt_chars:
            raise LimitExceededError(
                f"The prompt and history have {total} characters, which exceeds the limit of "
                f"{self.settings.max_prompt_chars}.",
                param="prompt",
            )


def _prompt(prompt: str | None) -> str:
    if not prompt:  # missing, null or "": the tutorial's `if not prompt`
        raise NoPromptError()
    return prompt


def _pick(value: Any, default: Any) -> Any:
    return default if value is None else value


def _message_form(history: list[Any] | None) -> bool:
    return bool(history) and not isinstance(history[0], list)


def _turns(history: list[Any]) -> list[dict[str, str]]:
    """Both history forms as chat-template messages."""
    if not _message_form(history):
        turns = []
        for question, answer in history:
            turns += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        return turns
    return [{"role": m.role, "content": m.content} for m in history]


def _check_window(prompt_tokens: int, served: ServedModel) -> None:
    if prompt_tokens >= served.context_length:
        raise ContextLengthExceededError(
            f"This model's maximum context length is {served.context_length} tokens. However, your prompt "
            f"resulted in {prompt_tokens} tokens. Please reduce the length of the prompt.",
            param="prompt",
        )
