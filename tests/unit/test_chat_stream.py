"""SSE framing and chunk protocol of POST /v1/chat/completions with stream=true (compat §2.2, §4, §9 1-4, 7, 13, 23)."""

from __future__ import annotations

import json

import pytest

from gateway.engine.fake import FakeEngine
from tests.unit.helpers import (
    MODEL,
    finish_reasons,
    is_compact,
    make_settings,
    open_gateway,
    sse_events,
    sse_payloads,
    stream_text,
)

pytestmark = pytest.mark.anyio


async def test_stream_framing_is_data_lines_only_and_ends_with_done(gw):
    r = await gw.chat(stream=True)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    assert r.headers["cache-control"] == "no-cache"
    assert r.headers["x-accel-buffering"] == "no"
    for line in r.text.replace("\r\n", "\n").split("\n"):
        assert line == "" or line.startswith("data: ") or line.startswith(": ping"), repr(line)
        assert not line.startswith(("event:", "id:", "retry:"))
    payloads = sse_payloads(r.text)
    assert payloads[-1] == "[DONE]"
    for payload in payloads[:-1]:
        assert "\n" not in payload and "\r" not in payload
        assert is_compact(payload), payload


async def test_stream_chunk_envelope_is_constant(gw):
    r = await gw.chat(stream=True)
    events = sse_events(r.text)
    assert len(events) >= 3
    ids = {e["id"] for e in events}
    assert len(ids) == 1 and next(iter(ids)).startswith("chatcmpl-")
    assert len({e["created"] for e in events}) == 1
    for e in events:
        assert e["object"] == "chat.completion.chunk"
        assert isinstance(e["created"], int) and not isinstance(e["created"], bool)
        assert e["model"] == MODEL
        assert isinstance(e["choices"], list)


async def test_stream_role_only_in_first_delta_and_deltas_never_null(gw):
    r = await gw.chat(stream=True)
    events = sse_events(r.text)
    assert events[0]["choices"] == [
        {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
    ]
    for e in events[1:]:
        for choice in e["choices"]:
            assert "role" not in choice["delta"], e
    for e in events:
        for choice in e["choices"]:
            assert isinstance(choice["delta"], dict), e
            assert isinstance(choice["index"], int)
    assert stream_text(events) == "Hello world!"


async def test_stream_finish_chunk_has_empty_delta_and_earlier_chunks_null_finish(gw):
    r = await gw.chat(stream=True)
    events = sse_events(r.text)
    choices = [c for e in events for c in e["choices"]]
    assert choices[-1]["delta"] == {}
    assert choices[-1]["finish_reason"] == "stop"
    assert all(c["finish_reason"] is None for c in choices[:-1])


async def test_no_usage_chunk_unless_requested(gw):
    for extra in ({}, {"stream_options": {"include_usage": False}}, {"stream_options": {}}):
        r = await gw.chat(stream=True, **extra)
        events = sse_events(r.text)
        assert all(e["choices"] for e in events), extra
        assert all(e.get("usage") is None for e in events), extra


async def test_usage_chunk_when_include_usage(gw):
    r = await gw.chat(stream=True, stream_options={"include_usage": True})
    events = sse_events(r.text)
    last = events[-1]
    assert last["choices"] == []
    usage = last["usage"]
    assert usage["completion_tokens"] == 3
    assert usage["prompt_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert all(e["choices"] for e in events[:-1])
    assert all(e.get("usage") is None for e in events[:-1])
    # same prompt count as the non-stream path
    plain = (await gw.chat()).json()["usage"]
    assert plain == usage


async def test_n2_stream_first_chunk_has_both_choices_in_order_and_both_finish(gw):
    r = await gw.chat(stream=True, n=2, stream_options={"include_usage": True})
    events = sse_events(r.text)
    first = events[0]["choices"]
    assert [c["index"] for c in first] == [0, 1]
    assert all(c["delta"] == {"role": "assistant", "content": ""} for c in first)
    finishes = {c["index"]: c["finish_reason"] for e in events for c in e["choices"] if c["finish_reason"]}
    assert finishes == {0: "stop", 1: "stop"}
    for index in (0, 1):
        assert stream_text(events, index) == "Hello world!"
    for e in events[1:]:
        assert all("role" not in c["delta"] for c in e["choices"])
    assert events[-1]["usage"]["completion_tokens"] == 6
    assert len(gw.engine.requests) == 2


async def test_max_tokens_length_finish_in_stream():
    async with open_gateway(FakeEngine(pieces=["a", "b", "c"])) as gw:
        r = await gw.chat(stream=True, max_tokens=2, stream_options={"include_usage": True})
        events = sse_events(r.text)
        assert stream_text(events) == "ab"
        assert finish_reasons(events) == ["length"]
        assert events[-1]["usage"]["completion_tokens"] == 2


async def test_error_after_stream_started_becomes_error_event_then_done():
    async with open_gateway(FakeEngine(fail_after=1)) as gw:
        r = await gw.chat(stream=True)
        assert r.status_code == 200
        payloads = sse_payloads(r.text)
        assert payloads[-1] == "[DONE]"
        events = [json.loads(p) for p in payloads[:-1]]
        error = events[-1]
        assert set(error) == {"error"}
        assert set(error["error"]) == {"message", "type", "param", "code"}
        assert error["error"]["message"]
        chunks = events[:-1]
        assert stream_text(chunks) == "Hello"
        assert any(c["delta"].get("content") == "Hello" for e in chunks for c in e["choices"])
        assert "\n" not in payloads[-2]


async def test_error_after_stream_started_with_n2():
    async with open_gateway(FakeEngine(fail_after=1)) as gw:
        r = await gw.chat(stream=True, n=2)
        assert r.status_code == 200
        payloads = sse_payloads(r.text)
        assert payloads[-1] == "[DONE]"
        assert "error" in json.loads(payloads[-2])


async def test_streaming_decided_by_body_not_accept_header(gw):
    r = await gw.client.post(
        "/v1/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True},
        headers={"accept": "application/json"},
    )
    assert r.headers["content-type"].startswith("text/event-stream")
    r = await gw.client.post(
        "/v1/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
        headers={"accept": "text/event-stream"},
    )
    assert r.headers["content-type"].startswith("application/json")
    assert r.json()["object"] == "chat.completion"


async def test_keepalive_pings_are_comments():
    """A slow stream gets `: ping` comments (never `event: ping`) and still parses chunk by chunk."""
    engine = FakeEngine(pieces=["a", "b"], delay=0.8)
    async with open_gateway(engine, settings=make_settings(sse_ping_seconds=1)) as gw:
        r = await gw.chat(stream=True)
        lines = r.text.replace("\r\n", "\n").split("\n")
        pings = [line for line in lines if line.startswith(":")]
        assert pings and all(line.startswith(": ping") for line in pings)
        assert not any(line.startswith("event:") for line in lines)
        assert stream_text(sse_events(r.text)) == "ab"
