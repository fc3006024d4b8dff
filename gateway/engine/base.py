"""The engine protocol: the seam between the services and whatever runs the model."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Protocol, runtime_checkable

from gateway.engine.types import GenerationDelta, GenerationRequest
from gateway.errors import EngineError


@runtime_checkable
class Engine(Protocol):
    """Runs generations. Closing the iterator early (or `abort`) stops the work within one step."""

    def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationDelta]:
        """Stream deltas for one sequence; the final delta has a finish_reason."""
        ...

    async def abort(self, request_id: str) -> None:
        """Stop a queued or running generation; unknown ids are ignored."""
        ...

    async def close(self) -> None:
        """Stop accepting work and release threads."""
        ...


async def queued_deltas(queue: asyncio.Queue) -> AsyncIterator[GenerationDelta]:
    """What an engine's worker thread puts on a sequence's queue, up to the finishing delta; an
    exception put there is raised as EngineError."""
    while True:
        item = await queue.get()
        if isinstance(item, BaseException):
            raise EngineError(f"Generation failed: {item}") from item
        yield item
        if item.finish_reason is not None:
            return
