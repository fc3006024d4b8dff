"""The one place a route learns whether this gateway or another server answers a model.

Routes call `serve(...)` with what they do for a local model; an entry whose handle has a `forwarder`
(kind `upstream`) gets the raw request body forwarded instead, and when none of its replicas can answer,
its `fallback` model is acquired like any request and answers in its place.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from gateway.registry import Lease, ModelRegistry
from gateway.streaming import sse_response, until_disconnect
from gateway.upstream.errors import UpstreamFailure

MAX_FALLBACKS = 3  # a chain a → b → c is fine; a cycle ends with the last failure

LocalHandler = Callable[[Lease], Awaitable[object]]


async def serve(
    request: Request,
    registry: ModelRegistry,
    model: str | None,
    capability: str,
    *,
    wait: bool,
    local: LocalHandler,
) -> object:
    seen: set[str] = set()
    while True:
        async with await registry.acquire(model, capability, wait=wait) as lease:
            forwarder = getattr(lease.served, "forwarder", None)
            if forwarder is None:
                return await local(lease)
            seen.add(lease.entry.name)
            try:
                return await _forward(request, lease, forwarder, capability)
            except UpstreamFailure as exc:
                if exc.fallback is None or exc.fallback in seen or len(seen) > MAX_FALLBACKS:
                    raise
                model = exc.fallback  # answered by the fallback; its id is the one the response shows


async def _forward(request: Request, lease: Lease, forwarder, capability: str) -> Response:
    body = await request.json()  # the raw body (cached by FastAPI): fields our schema does not know pass on
    if body.get("stream"):
        chunks = await forwarder.stream(capability, body, lease.model_id)  # retried before the first byte
        return sse_response(request, lease.keep(chunks), request.app.state.settings.sse_ping_seconds)
    answer = await until_disconnect(request, forwarder.complete(capability, body, lease.model_id))
    return JSONResponse(answer)  # as the upstream sent it (vLLM's extra fields too), not our response model
