"""The drain (gateway/shutdown.py) through the real app and the fake engine: refuse, wait, abort cleanly."""

from __future__ import annotations

import asyncio

import pytest

from gateway.engine.fake import FakeEngine
from tests.unit.helpers import MODEL, USER, assert_envelope, make_settings, open_gateway, sse_events, wait_until

pytestmark = pytest.mark.anyio

SLOW = [f"tok{i} " for i in range(400)]  # 400 × 0.05 s = 20 s unless something stops it


async def test_draining_refuses_new_requests_with_the_envelope_but_keeps_liveness():
    async with open_gateway() as gw:
        gw.app.state.shutdown.begin()
        response = await gw.chat()
        error = assert_envelope(response, 503, code="server_shutting_down", error_type="service_unavailable")
        assert "shutting down" in error["message"]
        assert response.headers["retry-after"] == "5"
        assert response.headers["connection"] == "close"
        assert "x-request-id" in response.headers
        assert (await gw.client.get("/health/ready")).status_code == 503
        assert (await gw.client.get("/health")).status_code == 200
        assert gw.engine.requests == []


@pytest.mark.parametrize("stream", [True, False])
async def test_requests_finishing_within_the_grace_period_complete(stream):
    engine = FakeEngine(pieces=["a ", "b ", "c "], delay=0.2)
    async with open_gateway(engine, settings=make_settings(shutdown_grace_seconds=60)) as gw:
        shutdown = gw.app.state.shutdown
        request = asyncio.ensure_future(gw.chat(stream=stream))
        assert await wait_until(lambda: engine.requests, timeout=5)
        # The drain returns as soon as the request is done, long before the 60 s grace period.
        await asyncio.wait_for(shutdown.drain(), timeout=20)
        response = await request
        assert response.status_code == 200
        if stream:
            events = sse_events(response.text)
            assert events[-1]["choices"][0]["finish_reason"] == "stop"
        else:
            assert response.json()["choices"][0]["message"]["content"] == "a b c "
        assert shutdown.in_flight == 0 and not shutdown.aborted


async def test_after_the_grace_period_a_stream_ends_with_an_error_event_and_done():
    engine = FakeEngine(pieces=SLOW, delay=0.05)
    async with open_gateway(engine, settings=make_settings(shutdown_grace_seconds=0.3)) as gw:
        shutdown = gw.app.state.shutdown
        request = asyncio.ensure_future(gw.chat(stream=True, n=2))
        assert await wait_until(lambda: len(engine.requests) == 2, timeout=5)
        await asyncio.wait_for(shutdown.drain(), timeout=10)
        response = await asyncio.wait_for(request, timeout=5)
        assert response.status_code == 200
        events = sse_events(response.text)  # asserts the single trailing [DONE]
        assert events[-1]["error"]["code"] == "server_shutting_down"
        assert any(choice["delta"].get("content") for e in events[:-1] for choice in e.get("choices", []))
        ids = {r.request_id for r in engine.requests}
        assert ids <= engine.aborted and not ids & engine.finished
        assert shutdown.aborted and shutdown.in_flight == 0


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
async def test_after_the_grace_period_a_json_request_gets_the_503_envelope(path):
    engine = FakeEngine(pieces=SLOW, delay=0.05)
    async with open_gateway(engine, settings=make_settings(shutdown_grace_seconds=0.3)) as gw:
        body = {"model": MODEL, "messages": USER} if "chat" in path else {"model": MODEL, "prompt": "go"}
        request = asyncio.ensure_future(gw.client.post(path, json={**body, "max_tokens": 1000}))
        assert await wait_until(lambda: engine.requests, timeout=5)
        await asyncio.wait_for(gw.app.state.shutdown.drain(), timeout=10)
        response = await asyncio.wait_for(request, timeout=5)
        assert_envelope(response, 503, code="server_shutting_down")
        assert response.headers["retry-after"] == "5"
        [generation] = engine.requests
        assert generation.request_id in engine.aborted


async def test_an_idle_server_drains_at_once():
    async with open_gateway(settings=make_settings(shutdown_grace_seconds=60)) as gw:
        await asyncio.wait_for(gw.app.state.shutdown.drain(), timeout=5)
        assert not gw.app.state.shutdown.aborted
