"""Graceful shutdown: refuse new requests, let running ones finish for a grace period, then end the rest cleanly.

    signal ─▶ begin(): draining; new requests → 503 `server_shutting_down` + Retry-After (ShutdownMiddleware)
          ─▶ drain(): wait until no request is in flight, at most `grace_seconds`
          ─▶ abort(): what still runs ends itself: a stream with an error event + [DONE], a non-streaming
             request with the 503 envelope (both stop their engine request)
          ─▶ the server closes its sockets, the lifespan closes the models, the process exits 0.

vLLM's `--shutdown-timeout` has the same contract (reject new requests, wait for in-flight ones, abort the
rest). The listening socket stays open while draining, so a request that still arrives (a load balancer that has
not noticed yet, a keep-alive connection) gets a 503 it can retry elsewhere instead of a reset connection.

The state is per app (app.state.shutdown), not per process; the signal wiring lives in gateway/cli.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.errors import RequestTimeoutError, ShuttingDownError, shaped_body

logger = logging.getLogger(__name__)
T = TypeVar("T")

# After the grace period the aborted requests need one decode step to wind down; bound that wait too.
ABORT_WAIT_SECONDS = 2.0
# Liveness stays 200 while draining (the process is alive); everything else, readiness included, gets the 503.
ALWAYS_ANSWERED = frozenset({"/health"})


class Shutdown:
    """The app's shutdown state: draining or not, requests in flight, and the abort of what is left."""

    def __init__(self, grace_seconds: float) -> None:
        self.grace_seconds = grace_seconds
        self.draining = False
        self.aborted = False
        self.in_flight = 0
        self._abort_events: set[asyncio.Event] = set()  # one per running request, created in its own loop
        self._began = 0.0

    def begin(self) -> None:
        """Stop admitting requests (idempotent)."""
        if not self.draining:
            self.draining, self._began = True, time.monotonic()
            logger.info(
                "shutting down: refusing new requests; %d in flight get up to %.1f s to finish",
                self.in_flight,
                self.grace_seconds,
            )

    def abort(self) -> None:
        """End every running request now (they answer with an error, see `guard` and `guard_stream`)."""
        self.begin()
        if not self.aborted:
            self.aborted = True
            if self.in_flight:
                logger.warning("grace period over: aborting %d request(s) still running", self.in_flight)
        for event in list(self._abort_events):
            event.set()

    async def drain(self) -> None:
        """begin(), wait for the running requests (at most the grace period), abort the rest, wait for them."""
        self.begin()
        if not await self._wait_idle(self.grace_seconds):
            self.abort()
            await self._wait_idle(ABORT_WAIT_SECONDS)
        logger.info("drained in %.2f s", time.monotonic() - self._began)

    async def _wait_idle(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return self.in_flight == 0

    @contextmanager
    def tracking(self) -> Iterator[None]:
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1

    @contextmanager
    def _abort_signal(self) -> Iterator[asyncio.Event]:
        event = asyncio.Event()
        if self.aborted:
            event.set()
        self._abort_events.add(event)
        try:
            yield event
        finally:
            self._abort_events.discard(event)

    async def guard(
        self,
        work: Awaitable[T],
        *,
        also_stop: Callable[[], Awaitable[Any]] | None = None,
        deadline: float | None = None,
    ) -> T:
        """Run `work`; if the server aborts it, cancel it and raise ShuttingDownError. `also_stop` is a second
        reason to stop (a client disconnect): when it returns first, the work is cancelled and CancelledError
        raised. `deadline` (time.monotonic()): past it the work is cancelled and RequestTimeoutError raised."""
        task = asyncio.ensure_future(work)
        with self._abort_signal() as aborted:
            stoppers = {asyncio.ensure_future(aborted.wait())}
            if also_stop is not None:
                stoppers.add(asyncio.ensure_future(also_stop()))
            timer = None if deadline is None else asyncio.ensure_future(asyncio.sleep(deadline - time.monotonic()))
            if timer is not None:
                stoppers.add(timer)
            try:
                done, _ = await asyncio.wait({task, *stoppers}, return_when=asyncio.FIRST_COMPLETED)
                if task in done:
                    return task.result()
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                if aborted.is_set():
                    raise ShuttingDownError()
                if timer is not None and timer in done:
                    raise _timed_out()
                raise asyncio.CancelledError("client disconnected")
            finally:
                for stopper in stoppers:
                    stopper.cancel()
                if not task.done():
                    task.cancel()

    async def guard_stream(self, chunks: AsyncIterator[T], *, deadline: float | None = None) -> AsyncIterator[T]:
        """Pass `chunks` through; if the server aborts, close them (stopping the generation) and raise
        ShuttingDownError, which the SSE layer sends as an error event before [DONE]. Past `deadline`
        (time.monotonic()) the same, with RequestTimeoutError."""
        with self._abort_signal() as aborted:
            stopper = asyncio.ensure_future(aborted.wait())
            step: asyncio.Future | None = None
            try:
                while True:
                    step = asyncio.ensure_future(anext(chunks))
                    left = None if deadline is None else max(0.0, deadline - time.monotonic())
                    await asyncio.wait({step, stopper}, timeout=left, return_when=asyncio.FIRST_COMPLETED)
                    if not step.done():
                        if aborted.is_set():
                            raise ShuttingDownError()  # the finally below stops the generation
                        raise _timed_out()
                    try:
                        item = step.result()
                    except StopAsyncIteration:
                        return
                    yield item
            finally:
                stopper.cancel()
                # A step still pending (abort, or this stream cancelled because the client left) is cancelled
                # first: that runs the generator's own cleanup, which aborts the engine request.
                if step is not None and not step.done():
                    step.cancel()
                    await asyncio.gather(step, return_exceptions=True)
                aclose = getattr(chunks, "aclose", None)
                if aclose is not None:
                    await aclose()


def _timed_out() -> RequestTimeoutError:
    return RequestTimeoutError("The request took longer than the server's request timeout; generation was stopped.")


class ShutdownMiddleware:
    """Counts the requests in flight and, once draining, answers new ones with the 503 envelope."""

    def __init__(self, app: ASGIApp, shutdown: Shutdown) -> None:
        self.app = app
        self.shutdown = shutdown

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in ALWAYS_ANSWERED:
            await self.app(scope, receive, send)
            return
        if self.shutdown.draining:
            await _refuse(send, scope)
            return
        with self.shutdown.tracking():
            await self.app(scope, receive, send)


async def _refuse(send: Send, scope: Scope) -> None:
    error = ShuttingDownError()
    body = json.dumps(shaped_body(scope, error)).encode()  # in the shape the route documents
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in error.headers().items()]
    headers.append((b"connection", b"close"))  # this server is going away: do not keep the connection
    await send({"type": "http.response.start", "status": error.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": body})
