"""Run engine sequences with stop strings applied, and merge several (n > 1, prompt lists) as they come."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass

from gateway.accounting import mark_first_token
from gateway.engine.base import Engine
from gateway.engine.types import GenerationRequest, SamplingParams, TokenLogprob
from gateway.services.stops import StopStringMatcher

logger = logging.getLogger(__name__)


@dataclass
class Piece:
    """What a sequence adds to its choice: text, its logprobs, and at the end a finish reason."""

    text: str = ""
    logprobs: list[TokenLogprob] | None = None
    prompt_logprobs: list[TokenLogprob] | None = None
    finish_reason: str | None = None
    completion_tokens: int = 0


async def run_sequence(
    engine: Engine, prompt_ids: list[int], params: SamplingParams, stops: list[str]
) -> AsyncIterator[Piece]:
    """One choice: engine deltas with stop strings trimmed; leaving early aborts the engine request."""
    matcher = StopStringMatcher(stops)
    request = GenerationRequest(request_id=uuid.uuid4().hex, prompt_ids=prompt_ids, params=params)
    tokens, finish, started = 0, "abort", time.monotonic()  # "abort" unless the engine says how it ended
    try:
        async with aclosing(engine.generate(request)) as deltas:
            async for delta in deltas:
                tokens += len(delta.token_ids)
                text, hit = matcher.feed(delta.text)
                if hit:
                    finish = "stop"
                    yield Piece(text, delta.logprobs, finish_reason=finish, completion_tokens=tokens)
                    return
                if delta.finish_reason is not None:
                    finish = delta.finish_reason
                    reason = "length" if finish == "length" else "stop"
                    yield Piece(text + matcher.flush(), delta.logprobs, finish_reason=reason, completion_tokens=tokens)
                    return
                if text or delta.logprobs or delta.prompt_logprobs:
                    yield Piece(text, delta.logprobs, delta.prompt_logprobs, completion_tokens=tokens)
    finally:
        logger.info(
            "sequence %s: %s after %d tokens (prompt %d) in %.2f s",
            request.request_id,
            finish,
            tokens,
            len(prompt_ids),
            time.monotonic() - started,
        )


_DONE = object()


async def merge(streams: list[AsyncIterator[Piece]]) -> AsyncIterator[tuple[int, Piece]]:
    """Interleave several sequences as their pieces arrive, tagged with their index (the first piece
    marks the request's time to first token)."""
    if len(streams) == 1:
        async with aclosing(streams[0]) as only:
            async for piece in only:
                mark_first_token()
                yield 0, piece
        return
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(index: int, stream: AsyncIterator[Piece]) -> None:
        try:
            async with aclosing(stream) as pieces:
                async for piece in pieces:
                    await queue.put((index, piece))
        except Exception as exc:
            await queue.put((index, exc))
        finally:
            await queue.put((index, _DONE))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        remaining = len(tasks)
        while remaining:
            index, item = await queue.get()
            if item is _DONE:
                remaining -= 1
            elif isinstance(item, Exception):
                raise item
            else:
                mark_first_token()
                yield index, item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
