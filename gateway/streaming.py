"""SSE framing (sse-starlette) and client-disconnect handling shared by the routes."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable
from typing import TypeVar

from fastapi import Request
from sse_starlette import EventSourceResponse

from adapters import AdapterError
from gateway.accounting import current_record
from gateway.errors import GatewayError, error_body, from_adapter_error
from gateway.shutdown import Shutdown

logger = logging.getLogger(__name__)

T = TypeVar("T")
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def request_deadline(request: Request) -> float | None:
    """When this request must end (time.monotonic()), from request_timeout_seconds; None = no limit."""
    timeout = getattr(request.app.state.settings, "request_timeout_seconds", None)
    if timeout is None:
        return None
    record = current_record()
    return (record.started if record is not None else time.monotonic()) + timeout


async def _events(
    chunks: AsyncIterator[str], shutdown: Shutdown, deadline: float | None = None
) -> AsyncIterator[dict[str, str]]:
    """`data:` events only; an error after the first byte (a shutdown's abort, a timeout) becomes an error
    event; always [DONE]."""
    try:
        async for data in shutdown.guard_stream(chunks, deadline=deadline):
            yield {"data": data}
    except GatewayError as exc:
        yield {"data": json.dumps(exc.to_dict())}
    except AdapterError as exc:
        yield {"data": json.dumps(from_adapter_error(exc).to_dict())}
    except Exception:
        logger.exception("stream failed")
        yield {"data": json.dumps(error_body("Internal error while generating.", "server_error"))}
    yield {"data": "[DONE]"}


def sse_response(request: Request, chunks: AsyncIterator[str], ping_seconds: float) -> EventSourceResponse:
    # When the client goes away sse-starlette cancels the generator; the engine request is aborted
    # in the sequence's `finally`, so the decode loop stops within one step. At shutdown the stream ends
    # itself (gateway/shutdown.py) before sse-starlette's own exit handling would cut it without [DONE].
    events = _events(chunks, request.app.state.shutdown, request_deadline(request))
    return EventSourceResponse(events, ping=int(max(1, ping_seconds)), headers=SSE_HEADERS, sep="\n")


async def until_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Run a non-streaming request, cancelling it (and so its generation) if the client disconnects, ending
    it with a 503 envelope if the server shuts down before it finishes, or 504 past the request timeout."""

    async def disconnected() -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                return

    return await request.app.state.shutdown.guard(work, also_stop=disconnected, deadline=request_deadline(request))
