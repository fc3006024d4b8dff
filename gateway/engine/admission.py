"""Admission control per model: at most max_running + max_queued sequences in the engine; beyond → 429.

The services call `reserve(engine, n)` while preparing a request, so an overloaded model answers a
plain HTTP 429 (with Retry-After) before any stream starts. Each later `generate()` consumes one
reserved place; a reservation that is never used (the client left first) expires after `ttl` seconds.
A `generate()` without a reservation (direct engine users, tests) is checked on its own.
No torch here: the services import this module.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

from gateway.engine.types import GenerationDelta, GenerationRequest
from gateway.errors import LimitExceededError, OverloadedError


class Admission:
    """Counts sequences inside an engine (queued or running) plus places reserved for them."""

    def __init__(self, *, max_running: int, max_queued: int, name: str = "model", ttl: float = 30.0) -> None:
        self.max_running = max_running
        self.max_queued = max_queued
        self.capacity = max_running + max_queued
        self.name = name
        self.ttl = ttl
        self.in_flight = 0
        self._reserved: deque[float] = deque()  # expiry time of each reserved place
        self._lock = threading.Lock()

    def _expire(self, now: float) -> None:
        while self._reserved and self._reserved[0] <= now:
            self._reserved.popleft()

    def _overloaded(self, n: int) -> OverloadedError:
        return OverloadedError(
            f"The model `{self.name}` is overloaded: {self.in_flight} sequence(s) running or queued "
            f"(limit {self.capacity} = {self.max_running} running + {self.max_queued} queued); "
            f"this request needs {n}. Retry shortly.",
            retry_after=1,
        )

    def reserve(self, n: int) -> None:
        """Hold n places for a request about to start, or raise OverloadedError (429); more places than
        the model has at all is a LimitExceededError (400): no retry could ever succeed."""
        if n > self.capacity:
            raise LimitExceededError(
                f"This request needs {n} sequences, which exceeds the limit of {self.capacity} the model "
                f"`{self.name}` can hold ({self.max_running} running + {self.max_queued} queued).",
                param="n",
            )
        now = time.monotonic()
        with self._lock:
            self._expire(now)
            if self.in_flight + len(self._reserved) + n > self.capacity:
                raise self._overloaded(n)
            self._reserved.extend([now + self.ttl] * n)

    def enter(self) -> None:
        """A sequence starts: use a reserved place, or check capacity (raises OverloadedError)."""
        with self._lock:
            self._expire(time.monotonic())
            if self._reserved:
                self._reserved.popleft()
            elif self.in_flight + len(self._reserved) >= self.capacity:
                raise self._overloaded(1)
            self.in_flight += 1

    def leave(self) -> None:
        with self._lock:
            self.in_flight -= 1

    @property
    def reserved(self) -> int:
        with self._lock:
            self._expire(time.monotonic())
            return len(self._reserved)


def reserve(engine: Any, n: int) -> None:
    """Reserve n sequences on an engine that has admission control (others accept everything)."""
    method = getattr(engine, "reserve", None)
    if method is not None:
        method(n)


class AdmittedEngine:
    """Admission control in front of an engine that has none of its own (the per-request HF engine)."""

    def __init__(self, engine: Any, admission: Admission) -> None:
        self.inner = engine
        self.admission = admission

    def __getattr__(self, name: str) -> Any:  # tokenizer, vocab_size, model, ... of the inner engine
        return getattr(self.inner, name)

    def reserve(self, n: int) -> None:
        self.admission.reserve(n)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationDelta]:
        self.admission.enter()
        try:
            async with aclosing(self.inner.generate(request)) as deltas:
                async for delta in deltas:
                    yield delta
        finally:
            self.admission.leave()

    async def abort(self, request_id: str) -> None:
        await self.inner.abort(request_id)

    def metrics_snapshot(self) -> dict[str, float]:
        """/metrics at scrape time: the inner engine runs max_running sequences at once, the rest wait."""
        in_flight = self.admission.in_flight
        running = min(in_flight, self.admission.max_running)
        return {"running": running, "waiting": in_flight - running, "batch_size": running}

    async def close(self) -> None:
        await self.inner.close()
