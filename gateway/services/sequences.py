"""Run engine sequences with stop strings applied, and merge several (n > 1, prompt lists) as they come."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass

from gateway.accounting import SequenceStats, add_sequence, capturing_text, mark_first_token
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
    stats = SequenceStats()
    texts: list[str] | None = [] if capturing_text() else None
    last_token_at: float | None = None
    try:
        async with aclosing(engine.generate(request)) as deltas:
            async for delta in deltas:
                if delta.token_ids:
                    now = time.monotonic()
                    if last_token_at is not None:  # a delta of k tokens stands for k steps of the engine
                        stats.token_gaps.extend([(now - last_token_at) / len(delta.token_ids)] * len(delta.token_ids))
                    last_token_at = now
                tokens += len(delta.token_ids)
                text, hit = matcher.feed(delta.text)
                if hit:
                    finish = "stop"
                    _keep(texts, text)
                    yield Piece(text, delta.logprobs, finish_reason=finish, completion_tokens=tokens)
                    return
                if delta.finish_reason is not None:
                    finish = delta.finish_reason
                    reason = "length" if finish == "length" else "stop"
                    text += matcher.flush()
                    _keep(texts, text)
                    yield Piece(text, delta.logprobs, finish_reason=reason, completion_tokens=tokens)
                    return
                if text or delta.logprobs or delta.prompt_logprobs:
                    _keep(texts, text)
                    yield Piece(text, delta.logprobs, delta.prompt_logprobs, completion_tokens=tokens)
    except Exception:
        finish = "error"
        raise
    finally:
        stats.queue_seconds, stats.tokens, stats.finish = request.timing.queue_seconds, tokens, finish
        stats.text = "".join(texts) if texts is not None else None
        add_sequence(stats)  # metrics: queue wait, inter-token latency, aborted sequences
        logger.info(
            "sequence %s: %s after %d tokens (prompt %d) in %.2f s",
            request.request_id,
            finish,
            tokens,
            len(prompt_ids),
            time.monotonic() - started,
        )


def _keep(texts: list[str] | None, text: str) -> None:
    if texts is not None and text:
        texts.append(text)


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
