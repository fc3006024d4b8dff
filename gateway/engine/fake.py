"""A scripted engine behind the real Engine protocol, for tests of everything above the engine."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from gateway.engine.types import GenerationDelta, GenerationRequest, TokenLogprob
from gateway.errors import EngineError


@dataclass
class FakeEngine:
    """Emits `pieces` one per token (ids 1, 2, 3, ...), honours max_new_tokens and aborts.

    `fail_after`: raise an EngineError after that many pieces (an error mid-stream).
    `delay`: seconds between pieces, to exercise cancellation and concurrency.
    """

    pieces: list[str] = field(default_factory=lambda: ["Hello", " world", "!"])
    fail_after: int | None = None
    delay: float = 0.0
    requests: list[GenerationRequest] = field(default_factory=list)
    aborted: set[str] = field(default_factory=set)
    finished: set[str] = field(default_factory=set)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationDelta]:
        self.requests.append(request)
        request.timing.start()
        params = request.params
        try:
            for step, piece in enumerate(self.pieces):
                if step >= params.max_new_tokens:
                    yield GenerationDelta(finish_reason="length")
                    return
                if self.fail_after is not None and step >= self.fail_after:
                    raise EngineError("fake engine failure")
                if self.delay:
                    await asyncio.sleep(self.delay)
                logprobs = None
                if params.logprobs is not None:
                    top = tuple((f"alt{k}", -1.0 - k) for k in range(params.logprobs))
                    logprobs = [TokenLogprob(token_id=step + 1, token=piece, logprob=-0.5, top=top)]
                yield GenerationDelta(text=piece, token_ids=[step + 1], logprobs=logprobs)
            self.finished.add(request.request_id)  # before the last yield: consumers stop reading there
            yield GenerationDelta(finish_reason="stop")
        finally:
            if request.request_id not in self.finished:
                self.aborted.add(request.request_id)

    async def abort(self, request_id: str) -> None:
        self.aborted.add(request_id)

    async def close(self) -> None:
        return None
