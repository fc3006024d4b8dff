"""A client that goes away aborts the engine request (compat §4.5, §9 22)."""

from __future__ import annotations

import asyncio

import pytest

from gateway.engine.fake import FakeEngine
from tests.unit.helpers import MODEL, USER, open_gateway, post_then_disconnect, wait_until

pytestmark = pytest.mark.anyio

MANY = [f"tok{i} " for i in range(200)]  # 200 × 0.05 s = 10 s if nothing stops it


def got_content(chunks: list[bytes]) -> bool:
    return b'"content":"tok' in b"".join(chunks)


async def finish(task: asyncio.Task) -> None:
    """The ASGI call itself must wind down promptly once the client is gone."""
    done, _ = await asyncio.wait({task}, timeout=2)
    assert done, "the app kept running after the client disconnected"
    if not task.cancelled():
        task.exception()  # retrieve, so asyncio does not warn


@pytest.mark.parametrize("n", [1, 2])
async def test_stream_disconnect_aborts_engine_request(n):
    engine = FakeEngine(pieces=MANY, delay=0.05)
    async with open_gateway(engine) as gw:
        body = {"model": MODEL, "messages": USER, "stream": True, "n": n}
        exchange = await post_then_disconnect(gw.app, "/v1/chat/completions", body, disconnect_when=got_content)
        assert exchange.status == 200
        assert await wait_until(lambda: len(engine.requests) == n, timeout=1.0)
        ids = {r.request_id for r in engine.requests}
        assert await wait_until(lambda: ids <= engine.aborted, timeout=1.0), (ids, engine.aborted)
        assert not ids & engine.finished
        await finish(exchange.task)


async def test_completions_stream_disconnect_aborts():
    engine = FakeEngine(pieces=MANY, delay=0.05)
    async with open_gateway(engine) as gw:
        body = {"model": MODEL, "prompt": "go", "stream": True, "max_tokens": 500}
        exchange = await post_then_disconnect(
            gw.app, "/v1/completions", body, disconnect_when=lambda c: b'"text":"tok' in b"".join(c)
        )
        assert exchange.status == 200
        [request] = engine.requests
        assert await wait_until(lambda: request.request_id in engine.aborted, timeout=1.0)
        await finish(exchange.task)


async def test_non_stream_disconnect_aborts_engine_request():
    engine = FakeEngine(pieces=MANY, delay=0.05)
    async with open_gateway(engine) as gw:
        body = {"model": MODEL, "messages": USER}
        exchange = await post_then_disconnect(gw.app, "/v1/chat/completions", body, disconnect_after=0.2)
        assert await wait_until(lambda: len(engine.requests) == 1, timeout=1.0)
        [request] = engine.requests
        assert await wait_until(lambda: request.request_id in engine.aborted, timeout=1.0)
        assert request.request_id not in engine.finished
        await finish(exchange.task)
