"""Transformers engine: one worker thread per model runs `model.generate` with a TextIteratorStreamer.

Requests queue for the worker (one generation at a time per model). Each one gets its own logits
processors (sampling with its own generator, penalties, logprobs) and a stopping criterion that
watches its cancel flag, so a dropped client stops the decode loop within one step.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

from gateway.engine.base import queued_deltas
from gateway.engine.beam import run_beam_search
from gateway.engine.logits import build_processors
from gateway.engine.speed import output_vocab_size
from gateway.engine.token_logprobs import TokenLogprobs
from gateway.engine.types import GenerationDelta, GenerationRequest
from gateway.errors import EngineError
from gateway.openmp_pool import release_openmp_workers

logger = logging.getLogger(__name__)


@dataclass
class _Job:
    request: GenerationRequest
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancel: threading.Event = field(default_factory=threading.Event)
    steps: deque = field(default_factory=deque)  # (token, logprob, top) per sampled token
    generated: int = 0
    last_token: int | None = None

    def emit(self, item: GenerationDelta | BaseException) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # the event loop is gone (shutdown); nobody is listening
            self.cancel.set()


class _CancelCriteria(StoppingCriteria):
    def __init__(self, cancel: threading.Event) -> None:
        self.cancel = cancel

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self.cancel.is_set(), dtype=torch.bool, device=input_ids.device)


class _DeltaStreamer(TextIteratorStreamer):
    """The transformers streamer, handing text plus the token ids (and logprobs) behind it to asyncio."""

    def __init__(self, engine: HFEngine, job: _Job, hidden_ids: frozenset[int]) -> None:
        params = job.request.params
        super().__init__(engine.tokenizer, skip_prompt=True, skip_special_tokens=params.skip_special_tokens)
        self.engine = engine
        self.job = job
        self.hidden_ids = hidden_ids
        self.pending: list[int] = []

    def put(self, value: torch.Tensor) -> None:
        if self.skip_prompt and self.next_tokens_are_prompt:
            self.next_tokens_are_prompt = False
            return
        ids = [int(v) for v in value.reshape(-1).tolist()]
        self.pending.extend(ids)
        self.job.generated += len(ids)
        self.job.last_token = ids[-1]
        visible = [i for i in ids if i not in self.hidden_ids]  # stop tokens never reach the text
        if visible:
            super().put(torch.tensor(visible))

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        ids, self.pending = self.pending, []
        if not ids and not text:
            return
        logprobs = None
        if self.job.request.params.logprobs is not None:
            steps = [self.job.steps.popleft() for _ in ids if self.job.steps]
            logprobs = [self.engine.logprobs.token(t, lp, top) for t, lp, top in steps]
        self.job.emit(GenerationDelta(text=text, token_ids=ids, logprobs=logprobs))


class HFEngine:
    """Engine over one transformers causal LM (see module docstring)."""

    def __init__(self, model: Any, tokenizer: Any, *, name: str, pad_token_id: int | None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.logprobs = TokenLogprobs(tokenizer)
        self.name = name
        self.pad_token_id = pad_token_id
        self.device = next(model.parameters()).device
        self.vocab_size = output_vocab_size(model)  # also when lm_head is int8-quantized
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"generate-{name}")
        self._jobs: dict[str, _Job] = {}
        self._closed = False

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationDelta]:
        if self._closed:
            raise EngineError("The engine is shutting down.")
        job = _Job(request=request, loop=asyncio.get_running_loop())
        self._jobs[request.request_id] = job
        self._executor.submit(self._run, job)
        try:
            async with aclosing(queued_deltas(job.queue)) as deltas:
                async for delta in deltas:
                    yield delta
        finally:
            job.cancel.set()  # no-op when finished; stops the decode loop when the caller left early
            self._jobs.pop(request.request_id, None)

    async def abort(self, request_id: str) -> None:
        job = self._jobs.get(request_id)
        if job is not None:
            job.cancel.set()

    async def close(self) -> None:
        self._closed = True
        for job in list(self._jobs.values()):
            job.cancel.set()
        self._executor.shutdown(wait=False, cancel_futures=True)

    # ---- worker thread ------------------------------------------------------------------------
    def _run(self, job: _Job) -> None:
        job.request.timing.start()  # the worker took it: its queue wait ends
        if job.cancel.is_set():
            job.emit(GenerationDelta(finish_reason="abort"))
            return
        try:
            with torch.inference_mode():
                self._generate(job)
        except Exception as exc:  # reported to the waiting request; the worker stays alive
            logger.exception("generation %s failed", job.request.request_id)
            job.emit(exc)
        finally:
            release_openmp_workers()  # between jobs its OpenMP workers would slow other engines (openmp_pool.py)

    def _generate(self, job: _Job) -> None:
        request, params = job.request, job.request.params
        input_ids = torch.tensor([request.prompt_ids], dtype=torch.long, device=self.device)
        if params.prompt_logprobs is not None:
            prompt = self.logprobs.prompt(self.model, request.prompt_ids, params.prompt_logprobs)
            job.emit(GenerationDelta(prompt_logprobs=prompt))
        if params.max_new_tokens == 0:
            job.emit(GenerationDelta(finish_reason="length"))
            return
        if params.num_beams > 1:  # this worker is the model's only user: the search runs here, unstreamed
            job.emit(
                run_beam_search(
                    self.model, self.tokenizer, request, pad_token_id=self.pad_token_id, cancelled=job.cancel.is_set
                )
            )
            return
        stop_ids = params.stop_token_ids
        processors = build_processors(
            params,
            prompt_len=input_ids.shape[1],
            vocab_size=self.vocab_size,
            device=self.device,
            on_step=lambda token, logprob, top: job.steps.append((token, logprob, top)),
        )
        config = GenerationConfig(
            max_new_tokens=params.max_new_tokens,
            do_sample=False,
            num_beams=1,
            eos_token_id=sorted(stop_ids) or None,
            pad_token_id=self.pad_token_id,
        )
        self.model.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            generation_config=config,
            logits_processor=processors,
            stopping_criteria=StoppingCriteriaList([_CancelCriteria(job.cancel)]),
            streamer=_DeltaStreamer(self, job, stop_ids),
        )
        if job.cancel.is_set():
            finish = "abort"
        elif job.last_token in stop_ids:
            finish = "stop"
        elif job.generated >= params.max_new_tokens:
            finish = "length"
        else:
            finish = "stop"
        logger.debug("generation %s: %s after %d tokens", request.request_id, finish, job.generated)
        job.emit(GenerationDelta(finish_reason=finish))
